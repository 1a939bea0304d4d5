"""The end of `emotion train` (on the chief): the best epoch's weights in a float32 model, evaluated on
val (never test: model/evaluate.py --final is the one step that scores it), the TTA decided (by the recipe,
or chosen on val), a temperature fitted on val, then export/ and metadata.json written through model.export.

metadata.json records what happened, each part from where it is known: "trained_with" (the recipe and TTA
rule the weights were trained under: this run's, the imported run's run.json, or the previous export's
record when this run trained nothing), "exported_with" (this run's), "tta" (the mode and how it was
decided), "calibration" and "test_scoring" (carried from the previous export and the model it started from).
"""

from __future__ import annotations

import logging

import tensorflow as tf

from model import train_io, trainer
from model.config import TrainConfig
from model.files import local_copy
from model.train_loop import LoopResult, Plan

log = logging.getLogger("emotion")


def export_best(config: TrainConfig, plan: Plan, stats: dict, strategy_name: str, result: LoopResult,
                imported: dict | None = None, teacher: dict | None = None, previous: dict | None = None) -> dict:
    """Exports best.weights.h5 into --model-dir; returns the metadata written. `previous`: the metadata of
    the export this one replaces (None when there is none, or it is not training's own)."""
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

    has_val = int(stats["written_per_split"].get("val", 0)) > 0
    results, scored = evaluation.evaluate_all(predict_final, config.data, ["val"] if has_val else [], plan.image_size)
    tta = evaluation.tta_record(config.tta, results)
    trained_with = trained_record(config, result, imported, previous)
    fields = {
        "arch": config.arch,
        "recommended_tta": tta["mode"],
        "tta": tta,
        "training_data": {
            "path": config.data,
            "fingerprint": stats.get("fingerprint"),
            "images_per_split": stats.get("written_per_split"),
            "face_crop": stats.get("face_crop", False),
        },
        "training": training_record(config, plan, strategy_name, result, imported, teacher, has_val),
        "recipe": trained_with["recipe"],
        "trained_with": trained_with,
        "exported_with": {"recipe": config.recipe_record, "tta_rule": config.tta},
        "metrics": results,
        **({"calibration": evaluation.calibration_record(scored[evaluation.metric_name("val", tta["mode"])],
                                                         tta["mode"])} if has_val else {}),
        "test_scoring": lineage_test_scoring(config, previous),
    }
    with train_io.refused_writes(model_dir, "the export"):
        metadata = export.export(final, model_dir, fields, engine_data=config.data)
    for name, m in results.items():
        log.info("train: %-15s accuracy %.4f  macro-F1 %.4f  ECE %.3f  (%d images)", name, m["accuracy"],
                 m["macro_f1"], m["ece"], m["examples"])
    log.info("train: exported %s to %s/export (TTA %s, %s; test not scored: python -m model.evaluate --model %s "
             "--data %s --final)", metadata["model_version"], model_dir, tta["mode"], tta["decided"], model_dir,
             config.data)
    return metadata


def trained_record(config: TrainConfig, result: LoopResult, imported: dict | None, previous: dict | None) -> dict:
    """The recipe and TTA rule the exported weights were trained under, and where that is known from."""
    if imported:
        values = imported.get("recipe") if isinstance(imported.get("recipe"), dict) else {}
        return {"recipe": {"config": str(imported.get("config")), "values": values},
                "tta_rule": str(values.get("tta", "auto")), "source": "the imported run's run.json"}
    this_run = {"recipe": config.recipe_record, "tta_rule": config.tta, "source": "this training run",
                "steps": [result.start_step, result.steps]}
    earlier = (previous or {}).get("trained_with")
    if result.steps > result.start_step:  # this run trained
        if result.start_step == 0:
            return this_run
        return {**this_run, "resumed": earlier if isinstance(earlier, dict) else
                "the recipe of the run that wrote the checkpoint it resumed from is not recorded"}
    if isinstance(earlier, dict):  # a re-export: nothing trained here, the weights are the previous export's
        return {**earlier, "source": f"{earlier.get('source', '?')} (carried by a re-export)"}
    if previous and isinstance(previous.get("recipe"), dict):
        recipe = previous["recipe"]
        tta_rule = (recipe.get("values") or {}).get("tta", "auto") if isinstance(recipe.get("values"), dict) else "?"
        return {"recipe": recipe, "tta_rule": str(tta_rule),
                "source": "the previous export's metadata.json (its recipe as it was at that export)"}
    return {"recipe": None, "tta_rule": "?", "source": "not recorded: this run trained no step and no earlier export "
                                                       "records the recipe"}


def lineage_test_scoring(config: TrainConfig, previous: dict | None) -> dict:
    """The test scorings of this model line so far: those the replaced export recorded and those of the
    exported model training started from (--init-weights)."""
    from model import test_scoring
    from model.artifact import ModelError, read_metadata

    records = [test_scoring.read(previous)] if previous else []
    if config.init_weights and not config.init_weights.endswith(".h5"):
        from model import resolve_model_dir

        try:
            records.append(test_scoring.read(read_metadata(resolve_model_dir(config.init_weights))))
        except (ModelError, FileNotFoundError):
            pass  # weights without an export's metadata: no record to carry
    return test_scoring.merge(*records) if records else test_scoring.empty()


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
        **({"init_weights": trainer.init_record(config)} if config.init_weights else {}),
    }
