"""The start-up check of an exported model, shared by the stages that run one (predict, demo).

Its own module rather than base/files.py: it imports model.loading and model.engines, which load
Keras or LiteRT, and base/ runs on ingest workers, which never do
(tests/test_architecture.py's TENSORFLOW_FREE).
"""

from __future__ import annotations

from model.errors import UsageError


def check_model(model: str, engine: str = "auto", *, load_weights: bool = True, what: str = "") -> tuple[dict, str]:
    """(the model's metadata.json, the engine a run will use), read and resolved once, after loading that
    engine the way workers will (load_weights=False: after reading its metadata and resolving the engine
    only, as a dry run does). A model that cannot be used stops the run here, with one line, before any
    output is touched; `what` names it in that line (e.g. "--shipped-model")."""
    from model import engines, resolve_model_dir
    from model.artifact import ModelError
    from model.loading import read_metadata

    try:
        if load_weights:
            loaded, metadata = engines.load(model, engine)
            return metadata, loaded.name
        metadata = read_metadata(resolve_model_dir(model))
        return metadata, engines.resolve(engine, metadata)
    except (FileNotFoundError, ModelError, engines.EngineError) as exc:
        raise UsageError(f"{what}: {exc}" if what else str(exc)) from None
