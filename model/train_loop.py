"""The training loop of `emotion train`: the run's sizes, the model and its checkpointed state, the
distributed step (strategy.run) and the epochs around it. The same code runs under every strategy.

    plan = plan_run(config, stats, strategy, policy)          # batch, steps, peak LR: fixed up front
    state = build_state(config, plan, strategy, ckpt_dir)     # model, optimizer, step, checkpoint
    restore_or_init(state, config, model_dir)                 # resume, or start from --init-weights
    result = Loop(config, plan, strategy, state, ...).run(history)   # epochs; history.csv, checkpoints

The model, its starting weights, the loss and each epoch's row are model/trainer.py's (RUNNER: this
module's Trainer), shared with the portable trainer; the step, the checkpoints and the epochs are this one's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time

import tensorflow as tf

from model import train_io
from model.config import TrainConfig
from model.errors import UsageError
from model.trainer import EpochEnd, Trainer, improves, patience_spent

log = logging.getLogger("emotion")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# =========================================================================== the run's sizes


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the config, the data and the strategy fix before a model is built."""

    replicas: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    peak_lr: float
    image_size: int
    policy: str  # the Keras dtype policy

    @property
    def loss_scaling(self) -> bool:
        return self.policy == "mixed_float16"  # bfloat16 has float32's exponent range: no loss scaling


def plan_run(config: TrainConfig, stats: dict, strategy: tf.distribute.Strategy, policy: str) -> Plan:
    from model import optimization

    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    n_train = int(stats["written_per_split"].get("train", 0))
    if n_train < global_batch:
        raise UsageError(f"--data {config.data} holds {plural(n_train, 'training image')}, fewer than one global "
                         f"batch of {global_batch} (--batch-size {config.batch_size} x "
                         f"{plural(replicas, 'replica')}): lower --batch-size")
    steps_per_epoch = config.steps_per_epoch or max(1, n_train // global_batch)
    return Plan(replicas=replicas, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                total_steps=steps_per_epoch * config.epochs,
                peak_lr=optimization.peak_lr(config.optimizer, config.lr, global_batch),
                image_size=int(stats["image_size"]), policy=policy)


# =========================================================================== model and checkpointed state


@dataclasses.dataclass
class State:
    """The model and everything a checkpoint restores with it."""

    model: object
    optimizer: object
    step: tf.Variable
    best_f1: tf.Variable  # the best val macro-F1 so far
    since_best: tf.Variable  # epochs since it improved (--patience)
    schedule: object  # the learning rate at the current step
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager


def build_state(config: TrainConfig, plan: Plan, strategy, ckpt_dir: str) -> State:
    import keras

    from model import optimization

    with strategy.scope():
        model = RUNNER.build_model(config, plan.image_size)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        lr_schedule = optimization.WarmupCosine(plan.peak_lr, int(config.warmup_epochs * plan.steps_per_epoch),
                                                plan.total_steps)
        optimizer = optimization.build_optimizer(config.optimizer, plan.peak_lr, config.weight_decay)
        if plan.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        best_f1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_val_macro_f1")
        since_best = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_since_best")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, best_f1=best_f1,
                                     since_best=since_best)
    return State(model=model, optimizer=optimizer, step=step, best_f1=best_f1, since_best=since_best,
                 schedule=lambda: lr_schedule(step), checkpoint=checkpoint,
                 manager=tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2))


def restore_or_init(state: State, config: TrainConfig, model_dir: str) -> None:
    """Resumes from the chief's latest checkpoint (unless --fresh); otherwise --init-weights, if given."""
    latest = tf.train.latest_checkpoint(f"{model_dir}/checkpoints")
    if latest and not config.fresh:
        state.checkpoint.restore(latest).expect_partial()
        log.info("train: resumed from %s at step %d", latest, int(state.step.numpy()))
        return
    if config.resume:
        log.info("train: --resume given but no checkpoint in %s/checkpoints; starting fresh", model_dir)
    if config.init_weights:
        RUNNER.initialize(state.model, config)
        log.info("train: initialised weights from %s", config.init_weights)


RUNNER = Trainer()


def teacher_targets(config: TrainConfig, model_dir: str, image_size: int, stats: dict):
    """(the teacher's soft targets as computed, their lookup by image hash) with --teacher; (None, None) without."""
    if not config.teacher:
        return None, None
    from model import distill
    from schemas import NUM_CLASSES

    train_io.make_dirs(model_dir)
    with train_io.refused_writes(f"{model_dir}/teacher_targets.npz", "the teacher's soft targets"):
        targets = distill.load_or_compute(model_dir, config.teacher, config.data, image_size, stats.get("fingerprint"))
    return targets, distill.TargetLookup(targets, NUM_CLASSES)


# =========================================================================== one step, on every replica


def make_train_step(config: TrainConfig, plan: Plan, strategy, state: State, class_weights):
    """The compiled step: one global batch from the iterator, forward and backward on every replica."""
    from schemas import NUM_CLASSES

    model, optimizer, loss_fn = state.model, state.optimizer, RUNNER.loss(config)

    def step_fn(pixels, labels, soft_targets=None):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(pixels, training=True), tf.float32)
            per_example = loss_fn(logits, tf.one_hot(labels, NUM_CLASSES), tf.gather(class_weights, labels),
                                  soft_targets)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=plan.global_batch)
            scaled = optimizer.scale_loss(loss) if plan.loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct

    @tf.function
    def train_step(iterator):
        optimizer.learning_rate.assign(state.schedule())
        loss, correct = strategy.run(step_fn, args=next(iterator))
        state.step.assign_add(1)
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

    return train_step


class Preemption:
    """SIGTERM (a preempted VM, a cluster's stop) asks the loop to checkpoint and exit 143 after this step;
    under multi-worker every worker stops at the same step."""

    def __init__(self, strategy):
        self.requested = False
        self._strategy = strategy
        self._multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.requested = True
        log.info("train: SIGTERM received; checkpointing and stopping after this step")

    @tf.function
    def _any_worker(self, flag):
        # ReduceOp has no MAX: any worker's flag makes the sum positive.
        return self._strategy.reduce("SUM", self._strategy.run(lambda f: tf.identity(f), args=(flag,)), axis=None) > 0

    def poll(self) -> bool:
        if self._multi_worker:
            self.requested = bool(self._any_worker(tf.constant(1.0 if self.requested else 0.0)).numpy())
        return self.requested


# =========================================================================== the epochs


@dataclasses.dataclass
class LoopResult:
    history: list[dict]
    epoch: int  # the last epoch finished
    start_step: int  # where this run began (0, or the step it resumed from)
    steps: int  # the global step it ended at
    stopped_early: bool
    seconds: float


class Loop:
    """The epochs of a run: steps, then validation, best weights, checkpoint and history per epoch."""

    def __init__(self, config: TrainConfig, plan: Plan, strategy, state: State, stats: dict, model_dir: str,
                 chief: bool, ckpt_dir: str, targets=None):
        from model import data, optimization

        self.config, self.plan, self.strategy, self.state = config, plan, strategy, state
        self.model_dir, self.chief, self.ckpt_dir = model_dir, chief, ckpt_dir
        self.has_val = int(stats["written_per_split"].get("val", 0)) > 0
        weights = tf.constant(optimization.class_weights(stats["written"].get("train", {}),
                                                         config.class_weight_power))
        self.train_step = make_train_step(config, plan, strategy, state, weights)
        train_files = data.split_files(config.data, "train")

        def dataset_fn(ctx: tf.distribute.InputContext):
            return data.train_dataset(
                train_files, plan.image_size, ctx.get_per_replica_batch_size(plan.global_batch),
                seed=config.seed + int(state.step.numpy()), input_context=ctx,
                augment_images=not config.no_augment, augment_preset=config.augment, targets=targets)

        self.iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        self.preemption = Preemption(strategy)
        self.history_path = f"{model_dir}/history.csv"
        self.best_weights = f"{model_dir}/best.weights.h5"
        self.log_dir = f"{model_dir}/logs/train"
        model = state.model

        @tf.function(reduce_retracing=True)
        def predict_logits(pixels):
            return tf.cast(model(pixels, training=False), tf.float32)

        self.predict_logits = predict_logits

    def run(self, history: list[dict]) -> LoopResult:
        config, state = self.config, self.state
        if self.chief:
            train_io.make_dirs(self.model_dir)
        self.writer = train_io.summary_writer(self.log_dir, self.chief)
        start_step = int(state.step.numpy())
        epoch = start_step // self.plan.steps_per_epoch
        started = time.time()
        while epoch < config.epochs and not self.preemption.requested:
            t0 = time.time()
            loss_sum, correct_sum, done = self._steps(epoch)
            if self.preemption.requested:
                self._exit_for_preemption()
            epoch += 1
            row = self._end_epoch(epoch, loss_sum, correct_sum, done, time.time() - t0)
            history = [h for h in history if int(h["epoch"]) < epoch] + [row]
            if self.chief:
                train_io.log_scalars(self.writer, self.log_dir, epoch, row)
                train_io.write_history(self.history_path, history, list(row))
            self._log_epoch(row)
            if patience_spent(config.patience, int(state.since_best.numpy())):
                log.info("train: val macro-F1 has not improved for %d epochs; stopping early", config.patience)
                return LoopResult(history, epoch, start_step, int(state.step.numpy()), True, time.time() - started)
        if self.preemption.requested:  # it came during the epoch's validation: stop before export all the same
            self._exit_for_preemption()
        return LoopResult(history, epoch, start_step, int(state.step.numpy()), False, time.time() - started)

    def _exit_for_preemption(self):
        self.save_checkpoint()
        log.info("train: checkpoint saved at step %d; exiting for preemption", int(self.state.step.numpy()))
        sys.exit(143)

    def _steps(self, epoch: int) -> tuple[float, float, int]:
        """The rest of this epoch's steps (all of them, unless it resumes mid-epoch): (loss sum, correct, steps)."""
        config, spe = self.config, self.plan.steps_per_epoch
        loss_sum = correct_sum = 0.0
        done = 0
        for i in range(int(self.state.step.numpy()) - epoch * spe, spe):
            loss, correct = self.train_step(self.iterator)
            loss_sum += float(loss)
            correct_sum += float(correct)
            done += 1
            if self.preemption.poll():
                break
            if config.checkpoint_every and int(self.state.step.numpy()) % config.checkpoint_every == 0:
                self.save_checkpoint()
            if self.chief and sys.stderr.isatty() and (i + 1) % 10 == 0:
                print(f"\r  epoch {epoch + 1}/{config.epochs} step {i + 1}/{spe} loss {loss_sum / done:.4f}",
                      end="", file=sys.stderr, flush=True)
        return loss_sum, correct_sum, done

    def _end_epoch(self, epoch: int, loss_sum: float, correct_sum: float, done: int, elapsed: float) -> dict:
        """The epoch's history row, after validation, the best weights and the checkpoint."""
        state, global_batch = self.state, self.plan.global_batch
        val = self._evaluate("val") if self.has_val else None
        row = EpochEnd(epoch=epoch, step=int(state.step.numpy()), lr=float(state.schedule().numpy()),
                       loss=loss_sum / max(1, done), accuracy=correct_sum / max(1, done * global_batch),
                       images=done * global_batch, seconds=elapsed,
                       val=(val["accuracy"], val["macro_f1"]) if val is not None else None).row()
        if val is not None:
            if improves(val["macro_f1"], float(state.best_f1.numpy())):
                state.best_f1.assign(val["macro_f1"])
                state.since_best.assign(0)
                if self.chief:
                    train_io.save_weights(state.model, self.best_weights)
            else:
                state.since_best.assign_add(1)
        elif self.chief:
            train_io.save_weights(state.model, self.best_weights)  # no val split: the last epoch is the model
        self.save_checkpoint()
        return row

    def _evaluate(self, split: str) -> dict:
        from model import evaluate as evaluation

        return evaluation.evaluate_split(self.predict_logits, self.config.data, split, self.plan.image_size, "none")

    def _log_epoch(self, row: dict) -> None:
        if sys.stderr.isatty():
            print("\r", end="", file=sys.stderr)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f%s  %.0f img/s  %.0fs",
            row["epoch"], self.config.epochs, row["loss"], row["accuracy"],
            f"  val acc {row['val_accuracy']:.4f}  val macro-F1 {row['val_macro_f1']:.4f}" if self.has_val else "",
            row["images_per_s"], row["epoch_seconds"],
        )

    def save_checkpoint(self) -> None:
        from model import ownership

        train_io.save_checkpoint(self.state.manager, int(self.state.step.numpy()))
        if not self.chief and tf.io.gfile.exists(os.path.dirname(self.ckpt_dir)):  # a worker's scratch copy
            ownership.model_gate(f"{self.model_dir}/.workers").remove_tree(os.path.dirname(self.ckpt_dir))
