"""Training recipes: checked-in TOML files of `emotion train` options, read with `--config NAME_OR_PATH`.

    emotion train --config shipped --data /tmp/fer2013-ingest --model-dir /tmp/ship
    emotion train --config model/recipes/demo.toml --data ... --model-dir ... --epochs 5   # flags override

A recipe's keys are `emotion train` option names with underscores (`batch_size`, `augment`, ...);
an unknown key is an error, so a typo never silently trains something else. Every training path
(the tf.distribute job and the portable trainer) reads recipes through `load`.
"""

from __future__ import annotations

import importlib.resources
import os
import tomllib

RECIPES = importlib.resources.files("model") / "recipes"


class RecipeError(ValueError):
    """A recipe that does not exist or names an option that does not."""


def names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in RECIPES.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str, allowed: set[str] | None = None) -> dict:
    """The recipe's options as a dict, plus `config` (its name or path). `allowed`: the option names."""
    if os.path.sep in name_or_path or name_or_path.endswith(".toml"):
        if not os.path.isfile(name_or_path):
            raise RecipeError(f"recipe file {name_or_path} does not exist")
        with open(name_or_path, "rb") as f:
            text = f.read()
    else:
        resource = RECIPES / f"{name_or_path}.toml"
        if not resource.is_file():
            raise RecipeError(f"no recipe named {name_or_path!r}; checked-in recipes: {', '.join(names())}")
        text = resource.read_bytes()
    try:
        values = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {name_or_path} is not valid TOML: {exc}") from None
    if allowed is not None:
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise RecipeError(f"recipe {name_or_path} sets unknown option(s) {', '.join(unknown)}")
    return {**values, "config": name_or_path}
