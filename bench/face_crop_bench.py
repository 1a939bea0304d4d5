"""Face-crop proxy: do uncropped photos, run through `--face-crop`, score like the face crops themselves?

FER2013 faces are upscaled and pasted into larger frames (2-4x the face size, random position,
flat / noise / gradient backgrounds, brightness 0.7-1.3x). Then, side by side in one run:

  crops      `emotion predict` on the original 48x48 faces (the reference)
  frames     `emotion predict --face-crop --face-detector haar|mtcnn` on the frames (the product path)
  in process every detector of model.preprocess (haar, mtcnn) on the same frames, for each crop
             margin, through the same model and TTA; the reference is the model on the same faces
             uncropped, on the same subset (detection time measured alone)

Accuracy on frames counts a frame with no face found as a miss ("all frames") and also among
frames where a face was found. --margins tunes the crop margin on *train* faces (never test)
before the test run.

    PYTHONPATH=bench python bench/face_crop_bench.py --faces /tmp/fer2013 --limit 1000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import preprocess  # noqa: E402
from schemas import LABELS  # noqa: E402


def sample_faces(root: pathlib.Path, limit: int, seed: int) -> list[tuple[pathlib.Path, str]]:
    files = sorted((p, p.parent.name) for p in root.glob("*/*") if p.parent.name in LABELS)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), size=min(limit, len(files)), replace=False)
    return [files[i] for i in sorted(pick)]


def make_frame(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The face upscaled to 96-192 px and pasted into a 2-4x larger frame."""
    side = int(rng.integers(96, 193))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    fw, fh = (int(side * rng.uniform(2.0, 4.0)) for _ in range(2))
    kind = rng.integers(0, 3)
    if kind == 0:
        frame = np.full((fh, fw), rng.uniform(20, 235), np.float32)
    elif kind == 1:
        noise = rng.uniform(0, 255, (max(2, fh // 16), max(2, fw // 16))).astype(np.float32)
        frame = cv2.resize(noise, (fw, fh), interpolation=cv2.INTER_CUBIC)
    else:
        a, b = rng.uniform(0, 255, 2)
        frame = np.tile(np.linspace(a, b, fw, dtype=np.float32), (fh, 1))
    x, y = int(rng.integers(0, fw - side + 1)), int(rng.integers(0, fh - side + 1))
    frame[y : y + side, x : x + side] = big
    return np.clip(frame * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)


def write_sets(faces, out: pathlib.Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for path, label in faces:
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        for name, image in (("crops", face), ("frames", make_frame(face, rng))):
            target = out / name / label / f"{path.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image)


def emotion_predict(input_dir: pathlib.Path, out: pathlib.Path, model: str, detector: str | None) -> dict:
    cmd = [sys.executable, "-m", "beam_pipelines.cli", "predict", "--input", str(input_dir), "--output", str(out),
           "--model", model] + (["--face-crop", "--face-detector", detector] if detector else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - t
    return summary


def score(summary: dict, total: int) -> dict:
    predicted = summary["totals"]["predicted"]
    correct = round(summary["accuracy"] * predicted)
    return {"frames": total, "face_found": predicted, "no_face": summary["rejected"].get("no_face", 0),
            "no_face_share": round(1 - predicted / total, 4), "accuracy_found": round(summary["accuracy"], 4),
            "accuracy_all_frames": round(correct / total, 4), "macro_f1_found": round(summary["macro_f1"], 4),
            "wall_s": round(summary["wall_s"], 1)}


def detector(name: str):
    def box(gray: np.ndarray):
        try:
            return preprocess.face_box(gray, name)
        except preprocess.PreprocessError:
            return None

    return box


def in_process_scores(frames_dir: pathlib.Path, detectors: dict, margins, model_dir: str) -> dict:
    """Per detector: detection time, and accuracy per crop margin through the model with its TTA."""
    import tensorflow as tf

    from model import tta
    from model.loading import load

    model, meta = load(model_dir)
    size, mode = int(meta["image_size"]), meta.get("recommended_tta", "none")
    files = sorted(frames_dir.glob("*/*.png"))
    labels = np.array([LABELS.index(p.parent.name) for p in files])
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    # The same faces uncropped (the crops/ twin of each frame): the reference on any subset.
    originals = np.stack([cv2.imread(str(frames_dir.parent / "crops" / p.parent.name / p.name), cv2.IMREAD_GRAYSCALE)
                          for p in files])[..., None].astype(np.float32)
    reference_correct = tta.probabilities(lambda v: model(v, training=False), tf.constant(originals),
                                          mode).numpy().argmax(-1) == labels
    results = {"reference_accuracy_all": round(float(reference_correct.mean()), 4)}
    for name, detect in detectors.items():
        t = time.perf_counter()
        boxes = [detect(image) for image in images]
        detect_s = time.perf_counter() - t
        found = np.array([b is not None for b in boxes])
        per_margin = {}
        for margin in margins:
            crops = [preprocess.resize(preprocess.crop_box(image, box, margin), size)
                     for image, box in zip(images, boxes) if box is not None]
            if not crops:
                per_margin[str(margin)] = {"accuracy_found": 0.0, "accuracy_all_frames": 0.0}
                continue
            pixels = tf.constant(np.stack(crops)[..., None].astype(np.float32))
            probs = tta.probabilities(lambda v: model(v, training=False), pixels, mode).numpy()
            correct = int((probs.argmax(-1) == labels[found]).sum())
            per_margin[str(margin)] = {"accuracy_found": round(correct / len(crops), 4),
                                       "accuracy_all_frames": round(correct / len(files), 4)}
        results[name] = {"face_found_share": round(float(found.mean()), 4),
                         "reference_accuracy_found": round(float(reference_correct[found].mean()), 4),
                         "detect_ms_per_frame": round(1000 * detect_s / len(files), 2), "by_margin": per_margin}
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--faces", required=True, help="FER2013 root with train/ and test/ <class>/ folders")
    p.add_argument("--limit", type=int, default=1000, help="faces per run (sampled, fixed seed)")
    p.add_argument("--model", default="shipped")
    p.add_argument("--margins", type=float, nargs="*", default=[-0.1, -0.05, 0.0, 0.05, 0.1, 0.15])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = pathlib.Path(args.faces)
    from model import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    detectors = {name: detector(name) for name in preprocess.FACE_DETECTORS}
    report = {"model": model_dir, "faces": args.limit, "margins_in_use": preprocess.FACE_MARGINS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # Margins are tuned on train faces; test faces are only measured.
        write_sets(sample_faces(root / "train", args.limit, args.seed), tmp / "tune", args.seed)
        report["tune_on_train"] = in_process_scores(tmp / "tune" / "frames", detectors, args.margins, model_dir)
        write_sets(sample_faces(root / "test", args.limit, args.seed), tmp / "test", args.seed + 1)
        report["test_emotion_predict"] = {
            "crops": score(emotion_predict(tmp / "test" / "crops", tmp / "out-crops", model_dir, None), args.limit),
            **{f"frames_face_crop_{name}": score(emotion_predict(tmp / "test" / "frames", tmp / f"out-{name}",
                                                                model_dir, name), args.limit)
               for name in preprocess.FACE_DETECTORS},
        }
        report["test_in_process"] = in_process_scores(tmp / "test" / "frames", detectors, args.margins, model_dir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
