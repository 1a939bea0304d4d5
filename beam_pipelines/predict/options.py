"""What one `emotion predict` run was asked to do, settled once: the parsed command line with the
defaults the model's metadata.json supplies filled in (face crop, TTA, the engine actually run).

The launcher builds a `PredictOptions` and a `ModelInfo` before anything is written; the pipeline
reads them and never changes them (both are frozen).
"""

from __future__ import annotations

import argparse
import dataclasses

from model.errors import UsageError
from schemas import TTA_MODES

FACES_MODES = ("largest", "all")  # one row per image (its largest face, or the whole image), or per face


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The model a run predicts with, as its rows and summary name it."""

    model_version: str
    model_fingerprint: str
    image_size: int

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelInfo:
        # A dry run with a gs:// model reads no metadata: its names are "unknown".
        return cls(metadata.get("model_version", "unknown"), metadata.get("model_fingerprint", "unknown"),
                   int(metadata.get("image_size", 48)))

    def names(self) -> dict:
        """{model_version, model_fingerprint}: what the manifest and the summary record."""
        return {"model_version": self.model_version, "model_fingerprint": self.model_fingerprint}


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The run's options (the parser's names), with the model's defaults resolved."""

    input: str
    output: str
    model: str
    face_crop: bool
    face_detector: str
    tta: str
    engine: str
    batch_size: int
    files_per_batch: int
    max_pixels: int
    overwrite: bool
    table: str | None
    run_id: str | None
    incremental: bool
    quiet: bool
    faces: str = "largest"
    min_confidence: float | None = None
    min_margin: float | None = None
    slices: str | None = None
    model_copies: int = 1  # RunInference's model_copies (predict/inference.py)

    @classmethod
    def resolve(cls, args: argparse.Namespace, metadata: dict, engine: str | None = None) -> PredictOptions:
        """The parsed arguments, with what they leave open taken from the model's metadata.json
        (empty for a dry run of a gs:// model): the face crop it was trained with, the TTA it
        recommends, and `engine`, the one the workers will run (as check_model resolved it; recorded
        as such, not "auto")."""
        values = vars(args).copy()
        if values.get("faces") == "all":  # every face is found, cropped and predicted
            if values["face_crop"] is False:
                raise UsageError("--faces all predicts each face the detector finds: it cannot run with --no-face-crop")
            values["face_crop"] = True
        if values["face_crop"] is None:
            values["face_crop"] = bool(metadata.get("training_data", {}).get("face_crop", False))
        if values["tta"] is None:
            values["tta"] = metadata.get("recommended_tta", "none")
        if values["tta"] not in TTA_MODES:
            raise UsageError(f"{args.model}: its metadata.json recommends TTA {str(values['tta'])[:40]!r}, which is "
                             f"none of {', '.join(TTA_MODES)}: re-export the model or pass --tta")
        if engine:
            values["engine"] = engine
        return cls(**values)

    @property
    def preprocessing(self) -> str:
        """What the model saw besides the pixels of the file, as the table records it (with the TTA,
        it decides whether an --incremental run may skip an image predicted before)."""
        crop = f"face_crop={self.face_detector if self.face_crop else 'none'}"
        return f"faces=all,{crop}" if self.faces == "all" else crop

    @property
    def abstains(self) -> bool:
        """Whether rows may be marked abstained (--min-confidence or --min-margin given)."""
        return self.min_confidence is not None or self.min_margin is not None

    def recorded(self) -> dict:
        """The options a run's manifest records (all but its input, output and model)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("input", "output", "model")}
