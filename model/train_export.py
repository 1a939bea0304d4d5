"""The end of `emotion train` (on the chief): the best epoch's weights in a float32 model, evaluated on
val and test, the TTA chosen on val, then export/ and metadata.json written through model.export.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from model import train_io, train_loop
from model.config import TrainConfig
from model.files import local_copy
from model.train_loop import LoopResult, Plan

log = logging.getLogger("emotion")


def export_best(config: TrainConfig, plan: Plan, stats: dict, strategy_name: str, result: LoopResult,
                imported: dict | None = None, teacher: dict | None = None) -> dict:
    """Exports best.weights.h5 into --model-dir; returns the metadata written."""
    import keras

    from model import archs, export
    from model import evaluate as evaluation
    from schemas import NUM_CLASSES

    model_dir = config.model_dir.rstrip("/")
    train_io.training_curves(result.history, f"{model_dir}/plots/training_curves.png")
    # The export computes in float32 whatever precision trained it: predict and serving see one model.
    keras.mixed_precision.set_global_policy("float32")
    final = archs.build(config.arch, plan.image_size, NUM_CLASSES)
    with local_copy(f"{model_dir}/best.weights.h5") as local:
        final.load_weights(local)

    # Final metrics are those of the exported (best) weights, not of the last step.
    @tf.function(reduce_retracing=True)
    def predict_final(pixels):
        return tf.cast(final(pixels, training=False), tf.float32)

    present = stats["written_per_split"]
    splits = [split for split in ("val", "test") if int(present.get(split, 0)) > 0]
    results = evaluation.evaluate_all(predict_final, config.data, splits, plan.image_size)
    # Chosen on val, never on test, unless the recipe fixes it.
    recommended_tta = evaluation.best_tta(results) if config.tta == "auto" else config.tta
    fields = {
        "arch": config.arch,
        "recommended_tta": recommended_tta,
        "training_data": {
            "path": config.data,
            "fingerprint": stats.get("fingerprint"),
            "images_per_split": stats.get("written_per_split"),
            "face_crop": stats.get("face_crop", False),
        },
        "training": training_record(config, plan, strategy_name, result, imported, teacher, "val" in splits),
        "recipe": config.recipe_record,
        "metrics": {name: {k: v for k, v in m.items() if k != "confusion"} | {"confusion": m["confusion"]}
                    for name, m in results.items()},
    }
    with train_io.refused_writes(model_dir, "the export"):
        metadata = export.export(final, model_dir, fields, engine_data=config.data)
    for name, m in results.items():
        log.info("train: %-15s accuracy %.4f  macro-F1 %.4f  ECE %.3f  (%d images)", name, m["accuracy"],
                 m["macro_f1"], m["ece"], m["examples"])
    log.info("train: exported %s to %s/export", metadata["model_version"], model_dir)
    return metadata


def training_record(config: TrainConfig, plan: Plan, strategy_name: str, result: LoopResult,
                    imported: dict | None, teacher: dict | None, has_val: bool) -> dict:
    """metadata.json's "training": how the exported weights were trained."""
    history = result.history
    best_epoch = None
    if history and has_val and all(h.get("val_macro_f1") not in (None, "") for h in history):
        best_epoch = int(max(history, key=lambda h: float(h["val_macro_f1"]))["epoch"])
    elif imported:
        best_epoch = imported.get("best_epoch")
    return {
        "strategy": strategy_name,
        "replicas": plan.replicas,
        "global_batch": plan.global_batch,
        "epochs_run": len(history) if imported else result.epoch,
        "steps": result.steps,
        "best_epoch": best_epoch,
        "stopped_early": result.stopped_early,
        "mixed_precision": plan.policy,
        "optimizer": config.optimizer,
        "peak_lr": plan.peak_lr,
        "seconds_this_run": round(result.seconds, 1),
        "resumed_from_step": result.start_step,
        **({"distillation": {"teacher": teacher["teacher"], "teacher_tta": teacher["teacher_tta"],
                             "alpha": config.distill_alpha, "temperature": config.distill_temperature}}
           if config.teacher else {}),
        **({"imported_run": imported} if imported else {}),
        **({"init_weights": train_loop.init_source(config)} if config.init_weights else {}),
    }
