"""What ingest's steps take from the command line: one frozen value, built by the launcher
(ingest/launcher.py) and passed to every DoFn of the stage, so that the steps' modules import
their options without importing the launcher."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """What the pipeline's steps need from the command line (the DoFns take this, not argparse's
    Namespace); `staging` is where this run writes (outputs.CommitPlan.write_root)."""

    input: str
    output: str
    staging: str
    image_size: int
    face_crop: bool
    max_pixels: int
    seed: int
    val_fraction: float
    test_fraction: float
    num_shards: int
    files_per_batch: int
    shuffle: str  # "spill" or "records", resolved from --shuffle and the runner (shuffle.shuffle_mode)

    @classmethod
    def from_args(cls, args, staging: str, shuffle: str) -> IngestOptions:
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("staging", "shuffle")]
        return cls(staging=staging, shuffle=shuffle, **{name: getattr(args, name) for name in names})
