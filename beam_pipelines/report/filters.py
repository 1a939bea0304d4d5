"""Small formatting helpers of `emotion report`: the templates' number filters, and the plain
shapes (images, name/value rows, split and TTA order) the section data is built from."""

from __future__ import annotations

import base64
import math

from schemas import TTA_MODES

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
TTA_ORDER = {mode: i for i, mode in enumerate(TTA_MODES)}  # cheapest first, as schemas.TTA_MODES


# --------------------------------------------------------------------------- template filters


def fnum(x, nd: int = 3) -> str:
    """x with nd decimals; an em dash when missing."""
    if x is None or x == "":
        return "\u2014"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "\u2014" if math.isnan(x) else f"{x:.{nd}f}"


def fint(x) -> str:
    """x with thousands separators; an em dash when missing."""
    if x is None:
        return "\u2014"
    try:
        return f"{int(x):,}"
    except (TypeError, ValueError):
        return str(x)


# --------------------------------------------------------------------------- plain shapes for the templates


def png(data: bytes | None, caption: str, cls: str = "") -> dict | None:
    """An image for the page: base64 text for a data: URI (None when there is none)."""
    if not data:
        return None
    return {"base64": base64.b64encode(data).decode("ascii"), "caption": caption, "cls": cls}


def by_split(items) -> list:
    """(split, value) pairs in the order train, val, test, then any other."""
    return sorted(items, key=lambda kv_: SPLIT_ORDER.get(kv_[0], 9))


def row(key: str, value, kind: str = "text", digits: int = 3) -> dict:
    """A name/value row of a definition list (macros.kv); kind: text, code, int or num."""
    return {"key": key, "value": value, "kind": kind, "digits": digits}


def pick(source: dict, keys) -> dict:
    """source's values for keys, in that order (None where missing)."""
    return {k: source.get(k) for k in keys}


# --------------------------------------------------------------------------- test-time augmentation names


def split_and_tta(name: str) -> tuple[str, str]:
    """A metrics key of the training metadata as (split, TTA mode): "val" -> ("val", "none"),
    "test_crops_tta" -> ("test", "crops"). The inverse of model.evaluate.metric_name."""
    if name.endswith("_tta") and "_" in name[: -len("_tta")]:
        split, _, mode = name[: -len("_tta")].partition("_")
        return split, mode
    return name, "none"


def tta_label(mode: str | None) -> str:
    """How the page names a TTA mode: "plain", "flip TTA", "crops TTA"."""
    return "plain" if mode in (None, "", "none") else f"{mode} TTA"
