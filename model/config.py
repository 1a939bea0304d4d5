"""The training configuration: one typed, validated `TrainConfig` for every trainer.

    defaults (the fields below)  <  a recipe (model/recipes/NAME.toml, --config)  <  command-line flags

`emotion train` (model/train.py) and the portable trainer (model/train_portable.py) both build theirs
here, so they share one set of defaults and one set of checks: an unknown recipe key, a value of the
wrong type or out of range is a UsageError (one line, exit 2) before anything touches a device.

    from model.config import from_argv
    config = from_argv(["--config", "shipped", "--data", "/tmp/fer-out", "--model-dir", "/tmp/ship"])

Imports neither TensorFlow nor Beam: the portable trainer runs where there is no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field

from model.errors import UsageError
from schemas import TTA_MODES

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")
PRECISIONS = ("auto", "on", "off")
OPTIMIZERS = ("sgd", "adamw")
# Fields that say where a run reads and writes, or how it treats what is there: flags only, never a recipe.
RUN_ONLY = ("config", "data", "model_dir", "overwrite", "recipe")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is told. The defaults here are the only defaults."""

    data: str | None = None          # ingest output; the portable trainer reads an arrays file instead
    model_dir: str | None = None
    config: str | None = None        # the recipe's name or path, when one was given
    epochs: int = 30
    batch_size: int = 64             # per replica; the global batch scales with the replicas
    strategy: str = "auto"
    cpu_replicas: int = 0
    mixed_precision: str = "auto"
    arch: str = "vgg_s"
    optimizer: str = "sgd"
    lr: float | None = None          # None: the optimizer's own peak LR (model/optimization.py)
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5
    patience: int = 0
    steps_per_epoch: int = 0
    checkpoint_every: int = 0
    fresh: bool = False
    resume: bool = False
    overwrite: bool = False
    no_augment: bool = False
    augment: str = "strong"
    tta: str = "auto"
    init_weights: str | None = None
    import_run: str | None = None
    teacher: str | None = None
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    seed: int = 42
    # The recipe's own values (as read, without `config`): what metadata.json records as the recipe.
    recipe: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = _normalized(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            problem = value_problem(f.name, value)
            if problem:
                raise UsageError(f"{flag(f.name)} {value}: {problem}")
        if self.import_run and self.epochs:
            object.__setattr__(self, "epochs", 0)  # --import-run evaluates and exports, it trains nothing
        if self.epochs == 0 and not self.import_run:
            raise UsageError("--epochs and --batch-size must be positive (--epochs 0 only with --import-run)")

    @property
    def recipe_record(self) -> dict | None:
        """metadata.json's "recipe": the recipe's name and values, None without one."""
        return {"config": self.config, "values": dict(self.recipe)} if self.config else None


def recipe_keys() -> set[str]:
    """The option names a recipe may set."""
    return {f.name for f in dataclasses.fields(TrainConfig)} - set(RUN_ONLY)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------------------- checks


def _field_types() -> dict[str, tuple[type, ...]]:
    """Each field's accepted types, from its annotation (`float | None` -> (float, NoneType))."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: typing.get_args(hint) or (hint,) for name, hint in hints.items()}


def _normalized(name: str, value):
    """An int where a float is wanted (TOML `lr = 1`) becomes that float; anything else stays as it is."""
    kinds = _field_types()[name]
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _choices(name: str) -> tuple[str, ...] | None:
    if name == "strategy":
        return STRATEGIES
    if name == "mixed_precision":
        return PRECISIONS
    if name == "optimizer":
        return OPTIMIZERS
    if name == "arch":
        from model.archs import ARCHS

        return tuple(sorted(ARCHS))
    if name == "augment":
        from model.augment import PRESETS

        return tuple(sorted(PRESETS))
    if name == "tta":
        return ("auto", *TTA_MODES)
    return None


# name -> (holds, what it must be); None (where a field allows it) is never checked against these.
_RANGES = {
    "epochs": (lambda v: v >= 0, "must be 0 or more"),
    "batch_size": (lambda v: v >= 1, "must be positive"),
    "cpu_replicas": (lambda v: v >= 0, "must be 0 or more"),
    "lr": (lambda v: v > 0, "must be positive"),
    "weight_decay": (lambda v: v >= 0, "must be 0 or more"),
    "warmup_epochs": (lambda v: v >= 0, "must be 0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    "class_weight_power": (lambda v: v >= 0, "must be 0 or more"),
    "patience": (lambda v: v >= 0, "must be 0 or more"),
    "steps_per_epoch": (lambda v: v >= 0, "must be 0 or more"),
    "checkpoint_every": (lambda v: v >= 0, "must be 0 or more"),
    "distill_alpha": (lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
    "distill_temperature": (lambda v: v > 0, "must be positive"),
}


def value_problem(name: str, value) -> str | None:
    """What is wrong with `value` for option `name` (its type, range or choices); None when nothing is."""
    kinds = _field_types()[name]
    if value is None:
        return None if type(None) in kinds else "must be given"
    accepted = (bool,) if bool in kinds else tuple(k for k in kinds if k is not type(None))
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, accepted):
        wanted = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true or false",
                              dict: "a table"}[k] for k in accepted)
        return f"must be {wanted}, not {type(value).__name__}"
    if isinstance(value, float) and value != value:
        return "must be a number, not NaN"
    choices = _choices(name)
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}"
    holds, wanted = _RANGES.get(name, (None, None))
    if holds is not None and not holds(value):
        return wanted
    return None


# --------------------------------------------------------------------------- building


def load_recipe(name_or_path: str) -> dict:
    """A recipe's values (its keys checked against TrainConfig, its values typed and in range), with no `config`."""
    from model import recipe

    try:
        values = recipe.load(name_or_path, recipe_keys())
    except recipe.RecipeError as exc:
        raise UsageError(str(exc)) from None
    values.pop("config", None)
    for key, value in values.items():
        problem = value_problem(key, _normalized(key, value))
        if problem:
            raise UsageError(f"recipe {name_or_path}: {key} = {value!r} {problem}")
    return values


def build(recipe_name: str | None = None, **flags) -> TrainConfig:
    """The config of a run: TrainConfig's defaults, then the recipe's values, then `flags` (those given)."""
    values = load_recipe(recipe_name) if recipe_name else {}
    return TrainConfig(**{**values, **flags, "config": recipe_name, "recipe": values})


def build_parser() -> argparse.ArgumentParser:
    """`emotion train`'s flags. A flag not given is absent from the parse (SUPPRESS), so that TrainConfig's
    defaults and the recipe decide it; the parser itself holds no default."""
    p = argparse.ArgumentParser(prog="emotion train", description="tf.distribute training on ingest output",
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config",
                   help="recipe: a checked-in name (model/recipes/NAME.toml, e.g. shipped, demo) or a TOML path; "
                        "flags given on the command line override it")
    p.add_argument("--data", required=True, help="ingest output folder (tfrecords/ and stats.json)")
    p.add_argument("--model-dir", required=True, help="checkpoints, logs, history, export (local or gs://)")
    p.add_argument("--epochs", type=int, help="0 with --import-run: evaluate and export weights trained elsewhere")
    p.add_argument("--batch-size", type=int, help="per replica; the global batch scales with replicas")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--cpu-replicas", type=int, help="split the CPU into N logical devices (mirrored)")
    p.add_argument("--mixed-precision", choices=PRECISIONS,
                   help="auto: float16 on GPUs, bfloat16 on CPUs with AVX512_BF16 or AMX, else float32")
    p.add_argument("--arch", help="vgg_s, vgg_xs, vgg_m or resnet_s")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, help="peak LR for a global batch of 256 (sgd 0.1, adamw 2e-3)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--class-weight-power", type=float, help="0: no reweighting, 1: inverse frequency")
    p.add_argument("--patience", type=int, help="stop after N epochs without val macro-F1 gain (0: off)")
    p.add_argument("--steps-per-epoch", type=int, help="0: one pass over train")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (0: per epoch)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    p.add_argument("--resume", action="store_true", help="resume (the default when checkpoints exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files under --model-dir's training names that no training or export wrote")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment", choices=_choices("augment"), help="augmentation preset")
    p.add_argument("--tta", choices=["auto", *TTA_MODES],
                   help="test-time augmentation the export recommends; auto: the best on val")
    p.add_argument("--init-weights",
                   help="start from an exported model dir (or .weights.h5; 'shipped': the shipped model), "
                        "e.g. to fine-tune; ignored on resume")
    p.add_argument("--import-run",
                   help="folder written by model/train_portable.py (weights, history, run.json): evaluate and "
                        "export its weights here instead of training (implies --epochs 0)")
    p.add_argument("--teacher",
                   help="distil from this exported model dir ('shipped': the shipped model): its soft targets on "
                        "the train split are computed once into MODEL_DIR/teacher_targets.npz (model/distill.py)")
    p.add_argument("--distill-alpha", type=float,
                   help="weight of the teacher's soft targets in the loss (the label gets 1 - alpha)")
    p.add_argument("--distill-temperature", type=float, help="softmax temperature of the distillation")
    p.add_argument("--seed", type=int)
    return p


def from_argv(argv=None) -> TrainConfig:
    """`emotion train`'s config from its command line (and the recipe it names)."""
    given = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    return build(given.pop("config", None), **given)


# --------------------------------------------------------------------------- provenance


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as metadata.json and run.json record it: portable, so never the absolute path
    of the checkout it ran from. A program inside the checkout is named as `python -m` runs it (a console
    script by its name); an argument inside the checkout becomes relative to it."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    program = argv[0]
    absolute = os.path.abspath(program)
    if program.endswith(".py") and absolute.startswith(checkout):
        module = absolute[len(checkout):-len(".py")].replace(os.sep, ".").removesuffix(".__main__")
        program = f"python -m {module}"
    elif os.sep in program:
        program = os.path.basename(program)
    args = [a[len(checkout):] if a.startswith(checkout) else a for a in argv[1:]]
    return " ".join([program, *args])
