"""Training plots (matplotlib, Agg backend)."""

from __future__ import annotations

import tensorflow as tf

from model.files import png_bytes, pyplot


def training_curves(history: list[dict], path: str) -> None:
    if not history:
        return
    epochs = [int(h["epoch"]) for h in history]
    get = lambda key: [float(h[key]) if h.get(key) not in (None, "") else float("nan") for h in history]  # noqa: E731
    fig, (ax1, ax2, ax3) = pyplot().subplots(1, 3, figsize=(13, 3.6), dpi=100)
    ax1.plot(epochs, get("loss"), marker=".", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax2.plot(epochs, get("accuracy"), marker=".", label="train (augmented)")
    if "val_accuracy" in history[0]:
        ax2.plot(epochs, get("val_accuracy"), marker=".", label="val accuracy")
        ax2.plot(epochs, get("val_macro_f1"), marker=".", label="val macro-F1")
    ax2.set_xlabel("epoch")
    ax2.set_title("accuracy / macro-F1")
    ax2.legend()
    ax3.plot(epochs, get("lr"), marker=".")
    ax3.set_xlabel("epoch")
    ax3.set_title("learning rate (end of epoch)")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(png_bytes(fig))
