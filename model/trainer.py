"""One trainer interface, two runners: what `emotion train` (model/train_loop.py, tf.distribute) and the
portable trainer (model/train_portable_loop.py, Keras 3 on any backend, JAX on a lent accelerator) do
alike, in one place, without TensorFlow (keras.ops only; TensorFlow is imported only to copy a gs:// file).

    runner.prepare(config, policy)           # the dtype policy and the seed, before anything is built
    runner.build_model(config, image_size)   # the recipe's architecture
    runner.initialize(model, config)         # --init-weights: a .weights.h5 file or an exported model
    loss = runner.loss(config)               # per example: label smoothing, class weight, distillation
    loss(logits, onehot, class_weight, teacher_log_probs)
    EpochEnd(...).row(); improves(f1, best); patience_spent(patience, since_best)   # each epoch's end

The runners differ in how the steps run, not in what they compute: the tf.distribute runner keeps its
own loop (strategy.run; Keras 3's model.fit cannot run under MultiWorkerMirroredStrategy), the portable
one calls model.fit. Both load a start model through model/loading.py, which holds model.keras to its
metadata.json.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model import artifact, files, resolve_model_dir
from model.config import TrainConfig
from model.errors import UsageError
from schemas import NUM_CLASSES

# history.csv's columns, in this order for both runners (then val's, when there is a val split)
HISTORY_COLUMNS = ("epoch", "step", "lr", "loss", "accuracy", "images_per_s", "epoch_seconds")
VAL_COLUMNS = ("val_accuracy", "val_macro_f1")


# =========================================================================== the interface


class Trainer:
    """A runner of TrainConfig: the model, its starting weights and its loss are this class's; how the
    epochs run is the runner's own loop, which ends each epoch in an EpochEnd."""

    def prepare(self, config: TrainConfig, policy: str) -> None:
        """The Keras dtype policy the runner chose for its hardware, and --seed (the initial weights, the
        augmentation and the shuffling follow from it): set before the model is built."""
        import keras

        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(config.seed)

    def build_model(self, config: TrainConfig, image_size: int):
        """The recipe's network for image_size-pixel images (call it inside the strategy's scope, if any)."""
        from model import archs

        return archs.build(config.arch, image_size, NUM_CLASSES)

    def initialize(self, model, config: TrainConfig) -> None:
        """--init-weights into `model`: a .weights.h5 file (local or gs://), or an exported model (a
        directory or a packaged name), loaded by load_export. Nothing without it (the
        seed set by the runner gives the initial weights)."""
        if not config.init_weights:
            return
        source = resolve_model_dir(config.init_weights)
        if source.endswith(".weights.h5"):
            load_weights_file(model, source)
        else:
            self.load_export(model, config.init_weights, source)

    def load_export(self, model, given: str, model_dir: str) -> None:
        """An exported model's weights into `model`: its model.keras loaded and held to its metadata.json
        by model/loading.py (no TensorFlow for a local one), then checked to be --arch's network; a
        UsageError (one line) naming `given` otherwise."""
        from model.loading import load

        try:
            exported, _ = load(model_dir)
        except artifact.ModelError as exc:
            raise UsageError(f"--init-weights {given}: {exc}") from None
        weights = exported.get_weights()
        if [w.shape for w in weights] != [w.shape for w in model.get_weights()]:
            raise UsageError(f"--init-weights {given} is a {exported.name}, which does not match --arch "
                             f"{model.name}")
        model.set_weights(weights)

    def loss(self, config: TrainConfig) -> Loss:
        return Loss.of(config)


# =========================================================================== starting weights


def load_weights_file(model, path: str) -> None:
    """A .weights.h5 file into `model`; one line when it is missing or not this architecture's."""
    if not files.exists(path):
        raise UsageError(f"--init-weights {path} does not exist")
    try:
        if "://" in path:  # Keras reads through a local path
            with files.local_copy(path) as local:
                model.load_weights(local)
        else:
            model.load_weights(path)
    except Exception as exc:  # not an HDF5 file, or the weights of another architecture
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"--init-weights {path} cannot be loaded into --arch {model.name} ({reason}): "
                         f"give weights saved from a {model.name}") from None


def source_version(source: str | None) -> str | None:
    """The model_version of an exported model (a directory or a packaged name) from its checked
    metadata.json; None for a .weights.h5 file or when it is not at hand (gone, or unreadable here)."""
    if not source:
        return None
    model_dir = resolve_model_dir(source)
    if model_dir.endswith(".weights.h5"):
        return None
    try:
        return str(artifact.read_metadata(model_dir)["model_version"])
    except (artifact.ModelError, KeyError, OSError):
        return None


def init_record(config: TrainConfig) -> dict | None:
    """The record of --init-weights (metadata.json's, run.json's): the source as given and, for an
    exported model, its model_version (so a packaged name like "fast" stays traceable after that model
    is replaced)."""
    if not config.init_weights:
        return None
    return {"from": config.init_weights, "model_version": source_version(config.init_weights)}


# =========================================================================== the loss


def teacher_log_probs_valid(log_probs: np.ndarray, rows: int) -> bool:
    """Teacher targets read back from a file (untrusted): one finite row of class log-probabilities per image."""
    return log_probs.shape == (rows, NUM_CLASSES) and bool(np.isfinite(log_probs).all())


def distillation_loss(logits, teacher_log_probs, temperature: float):
    """Per example: T^2-scaled cross-entropy between the tempered teacher and student distributions."""
    from keras import ops

    soft = ops.softmax(teacher_log_probs / temperature, axis=-1)
    return ops.categorical_crossentropy(soft, logits / temperature, from_logits=True) * temperature**2


@dataclasses.dataclass(frozen=True)
class Loss:
    """Both runners' loss per example: the label-smoothed cross-entropy times the label's class weight,
    mixed (with a teacher) with the distillation term: (1 - alpha) * CE + alpha * T^2 * soft CE."""

    label_smoothing: float
    distill_alpha: float
    distill_temperature: float
    distils: bool  # the recipe names a teacher: the loss takes its log-probabilities

    @classmethod
    def of(cls, config: TrainConfig) -> Loss:
        return cls(config.label_smoothing, config.distill_alpha, config.distill_temperature, bool(config.teacher))

    def __call__(self, logits, onehot, class_weight, teacher_log_probs=None):
        from keras import ops

        logits = ops.cast(logits, "float32")
        smoothed = onehot * (1.0 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        per_example = ops.categorical_crossentropy(smoothed, logits, from_logits=True) * class_weight
        if teacher_log_probs is not None:
            per_example = ((1.0 - self.distill_alpha) * per_example + self.distill_alpha
                           * distillation_loss(logits, teacher_log_probs, self.distill_temperature))
        return per_example


# =========================================================================== each epoch's end


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """What a runner's epoch measured: its history row, and the val scores the epochs are chosen on."""

    epoch: int  # 1-based, the epoch just finished
    step: int  # the global step it ended at
    lr: float
    loss: float  # mean per-step loss
    accuracy: float  # on the augmented training batches
    images: int  # training images this epoch
    seconds: float
    val: tuple[float, float] | None = None  # (accuracy, macro-F1), when there is a val split

    def row(self) -> dict:
        """history.csv's row (HISTORY_COLUMNS, then VAL_COLUMNS with val)."""
        row = dict(zip(HISTORY_COLUMNS, (self.epoch, self.step, self.lr, self.loss, self.accuracy,
                                         self.images / max(self.seconds, 1e-9), self.seconds)))
        if self.val is not None:
            row.update(zip(VAL_COLUMNS, self.val))
        return row


def improves(val_macro_f1: float, best: float) -> bool:
    """Whether this epoch's weights replace the best so far (a strict gain in val macro-F1)."""
    return val_macro_f1 > best


def patience_spent(patience: int, epochs_since_best: int) -> bool:
    """--patience: stop after that many epochs without a gain (0: never)."""
    return bool(patience) and epochs_since_best >= patience
