"""The model: architectures, training, export and evaluation. Importing the package imports nothing heavy."""

import importlib.resources

# The model that ships inside the package (a Dataflow worker's image included); "shipped" names it
# wherever a model directory is asked for.
SHIPPED_MODEL = str(importlib.resources.files("model") / "shipped")


def resolve_model_dir(model_dir: str) -> str:
    """'shipped' -> the installed shipped model; anything else is a path or gs:// URI."""
    return SHIPPED_MODEL if model_dir == "shipped" else model_dir
