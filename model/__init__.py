"""The model: architectures, training, export and evaluation. Importing the package imports nothing heavy."""

import importlib.resources

# The models that ship inside the package (a Dataflow worker's image included), by the name that stands
# for them wherever a model directory is asked for: "shipped", the accurate one (the default), and
# "fast", distilled from it at a quarter of its compute (model/recipes/fast_base.toml, then fast.toml).
SHIPPED_MODEL = str(importlib.resources.files("model") / "shipped")
FAST_MODEL = str(importlib.resources.files("model") / "fast")
PACKAGED_MODELS = {"shipped": SHIPPED_MODEL, "fast": FAST_MODEL}


def resolve_model_dir(model_dir: str) -> str:
    """A packaged model's name ('shipped', 'fast') -> its installed directory; anything else is a path or
    gs:// URI."""
    return PACKAGED_MODELS.get(model_dir, model_dir)
