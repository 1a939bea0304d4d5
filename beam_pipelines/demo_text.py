"""The demo's own words: the title and note of each section of its report page, and the table it prints
at the end (one line per stage: what it did and how well)."""

from __future__ import annotations

from schemas import SPLITS


def report_sections(demo, per_split: dict, raw) -> list[dict]:
    """The page's sections in the demo's order, with what each shows in the demo's own words."""
    args = demo.args
    sections = [
        {
            "path": "ingest",
            "title": "Data: the embedded sample, ingested",
            "note": "Bad files are part of the sample on purpose: an empty file, a truncated JPEG, a text file named "
            ".png, a folder naming no emotion (contempt/) and a .DS_Store.",
        },
        {
            "path": "train",
            "title": f"Training: recipe {args.config} ({args.arch}, {args.epochs} epochs on the sample)",
            "note": "The shipped model fine-tuned for seconds on the sample's train split (recipe "
            f"model/recipes/{args.config}.toml): the mechanics of adapting the model to your own data. "
            "On a few dozen test images the scores move by a few images either way.",
        },
        {"path": "predict-trained", "title": "Test split: freshly trained model"},
    ]
    if demo.shipped:
        sections.append({
            "path": "predict-shipped",
            "title": "Test split: shipped model",
            "note": f"The shipped model ({demo.shipped_meta.get('model_version')}) on the same "
            f"{per_split['test']} test images.",
        })
    sections.append({
        "path": raw.name,
        "title": f"Raw sample folder: {raw.what}",
        "note": "The image folder itself, not the TFRecords: files that cannot be decoded go to the "
        "dead-letter table instead of failing the job.",
    })
    if demo.shipped:
        sections.append({
            "path": "compare-trained-vs-shipped",
            "title": "Trained (a) against shipped (b), image by image",
            "note": "emotion compare on the two test-split runs above: where the two models disagree, and "
                    "which of them is right there.",
        })
    return sections


def print_summary(p, stats, meta, results, runs, raw_name, path) -> None:
    tot = stats["totals"]
    per_split = stats["written_per_split"]
    splits = ", ".join(f"{s} {per_split[s]}" for s in SPLITS if s in per_split)
    m = meta.get("metrics", {})

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    training = meta.get("training", {})
    rows = [
        (
            "ingest",
            f"{tot['written']} images written ({splits}), "
            f"{tot['rejected']} rejected, {tot['skipped_non_data']} skipped of {tot['matched']} files",
        ),
        (
            "train",
            f"val macro-F1 {f(m.get('val', {}).get('macro_f1'))} "
            f"(flip TTA {f(m.get('val_flip_tta', {}).get('macro_f1'))}), "
            f"{training.get('epochs_run')} epoch{'' if training.get('epochs_run') == 1 else 's'} in "
            f"{training.get('seconds_this_run')}s",
        ),
    ]
    for name, _, what in runs:
        s = results[name]
        rows.append(
            (
                f"test, {what.replace('freshly ', '')}",
                f"accuracy {f(s['accuracy'])}, macro-F1 {f(s['macro_f1'])} on {s['labelled']} images"
                + (" (flip TTA)" if s.get("tta") == "flip" else ""),
            )
        )
    s = results[raw_name]
    rows.append(
        (
            "raw folder",
            f"{s['totals']['predicted']} predicted, {s['totals']['rejected']} rejected "
            f"({', '.join(s['rejected'])}), {s['totals']['skipped_non_data']} skipped",
        )
    )
    rows.append(("report", path))
    width = max(len(r[0]) for r in rows)
    print(f"\nDemo finished in {p.elapsed():.1f}s\n", flush=True)
    print(f"  {'stage':<{width}}  result")
    print(f"  {'-' * width}  {'-' * 60}")
    for stage, result in rows:
        print(f"  {stage:<{width}}  {result}")
    print(f"\nOpen {path} in a browser.", flush=True)
