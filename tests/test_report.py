"""`emotion report`: the page rendered from beam_pipelines/report/templates on small real outputs.

Outputs used: the session's tiny ingest output, the shipped model's own training folder
(model/shipped: metadata.json with every TTA metric, history.csv, training curves) and
predictions of the shipped model on a few images of the embedded sample (seconds).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from beam_pipelines.report import launcher as report
from beam_pipelines.report import filters as report_format
from conftest import REPO, SAMPLE, SHIPPED_MODEL

REPO_DATA = REPO / "tests" / "data"
needs_shipped = pytest.mark.skipif(
    not (SHIPPED_MODEL / "metadata.json").exists(), reason="model/shipped is not in this checkout"
)


# --------------------------------------------------------------------------- helpers


class Tables(HTMLParser):
    """Every <table> of a page as a list of rows, each a list of its cells' text."""

    def __init__(self, page: str):
        super().__init__()
        self.tables, self._cell = [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_after(page: str, heading: str) -> list[list[str]]:
    """The rows of the first table after the given heading text."""
    return Tables(page[page.index(heading) :]).tables[0]


def render(folder, *args) -> str:
    path = report.run(["--output", str(folder), *map(str, args)])
    assert path == f"{folder}/{report.REPORT_NAME}"
    return (folder / report.REPORT_NAME).read_text()


def assert_self_contained(page: str, folder) -> None:
    """No script, no external reference, every plot of the folder embedded once as a PNG."""
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert 'src="http' not in page and "http://" not in page and "https://" not in page
    assert all(h.startswith("#") for h in re.findall(r'href="?([^" >]*)', page))  # links within the page only
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert len(images) == len(list(folder.glob("**/plots/*.png")))
    assert report.GENERATOR_TAG in page[:4096]  # check_report_is_ours finds it
    assert "could not be read" not in page


def anchors_resolve(page: str) -> None:
    ids = set(re.findall(r'id="?([\w-]+)', page))
    assert ids >= {h[1:] for h in re.findall(r'href="(#[^"]+)"', page)}


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """The shipped model's predictions on 2 images of each of 3 classes and one undecodable file
    whose name needs escaping."""
    from beam_pipelines.predict import launcher as predict

    images = tmp_path_factory.mktemp("few_faces")
    for label in ("happy", "sad", "surprise"):
        (images / label).mkdir()
        for src in sorted(p for p in (SAMPLE / label).glob("P*Test_*.jpg"))[:2]:
            shutil.copy(src, images / label / src.name)
    (images / "sad" / "<script>alert(1) & co.png").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("few_predictions") / "predict"
    predict.run(["--input", str(images), "--output", str(out), "--tta", "none"])
    return out


@pytest.fixture
def predict_only(predictions, tmp_path):
    folder = tmp_path / "predict"
    shutil.copytree(predictions, folder)
    return folder


@pytest.fixture
def ingest_only(tiny_ingest, tmp_path):
    folder = tmp_path / "ingest"
    shutil.copytree(tiny_ingest, folder)
    return folder


@pytest.fixture
def train_only(tmp_path):
    """The shipped model's training folder (its metadata, history and plots; not the weights)."""
    folder = tmp_path / "train"
    shutil.copytree(SHIPPED_MODEL, folder, ignore=shutil.ignore_patterns("export"))
    return folder


@pytest.fixture
def demo_like(tiny_ingest, predictions, train_only, tmp_path):
    """The layout `emotion demo` writes: ingest/, train/, two predict outputs and demo.json."""
    root = tmp_path / "demo"
    root.mkdir()
    shutil.copytree(tiny_ingest, root / "ingest")
    shutil.move(train_only, root / "train")
    shutil.copytree(predictions, root / "predict-a")
    shutil.copytree(predictions, root / "predict-b")
    summary = json.loads((root / "predict-b" / "summary.json").read_text())
    summary["tta"] = "crops"
    (root / "predict-b" / "summary.json").write_text(json.dumps(summary))
    manifest = {
        "title": "Demo & <friends>",
        "sections": [
            {"path": "ingest", "title": "Data: tiny", "note": "Note with <i>markup</i> & an ampersand."},
            {"path": "train", "title": "Training: shipped"},
            {"path": "predict-a", "title": "Predictions A"},
            {"path": "predict-b", "title": "Predictions B"},
        ],
        "stages": [{"stage": "ingest", "result": "ok <b>bold</b>", "seconds": 1.5}],
    }
    (root / report.MANIFEST).write_text(json.dumps(manifest))
    return root


# --------------------------------------------------------------------------- TTA labels


def test_metric_keys_are_read_as_split_and_tta_mode():
    assert report_format.split_and_tta("val") == ("val", "none")
    assert report_format.split_and_tta("test_flip_tta") == ("test", "flip")
    assert report_format.split_and_tta("test_crops_tta") == ("test", "crops")
    assert [report_format.tta_label(m) for m in ("none", "flip", "crops", None)] == [
        "plain",
        "flip TTA",
        "crops TTA",
        "plain",
    ]


@needs_shipped
def test_training_metrics_name_each_tta_mode(train_only):
    """Each row of the metrics table carries the numbers of the metrics key its label names
    (crops TTA metrics were once shown as "flip TTA")."""
    meta = json.loads((train_only / "metadata.json").read_text())
    metrics = meta["metrics"]
    # Training scores val in 3 modes; the final step scores test once, in the recommended mode.
    recommended = {"none": "", "flip": "_flip_tta", "crops": "_crops_tta"}[meta["recommended_tta"]]
    assert {"val", "val_flip_tta", "val_crops_tta"} <= set(metrics)
    assert [k for k in metrics if k.startswith("test")] == [f"test{recommended}"]
    page = render(train_only)
    rows = table_after(page, "Metrics of the exported (best) weights")
    assert rows[0] == ["split", "inference", "images", "accuracy", "macro-F1"]
    names = {"plain": "", "flip TTA": "_flip_tta", "crops TTA": "_crops_tta"}
    shown = {}
    for split, inference, images, accuracy, f1 in rows[1:]:
        label = inference.replace("(recommended)", "").strip()
        key = split + names[label]
        m = metrics[key]
        assert (images, accuracy, f1) == (f"{m['examples']:,}", f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}"), key
        assert key not in shown, key  # no two rows under one label
        shown[key] = inference
    assert set(shown) == set(metrics)
    assert sorted(k for k, inference in shown.items() if "(recommended)" in inference) == [
        f"test{recommended}",
        f"val{recommended}",
    ]
    heads = table_after(page, "Per-class F1")[0]
    test_head = "F1 test" + {"none": "", "flip": " (flip TTA)", "crops": " (crops TTA)"}[meta["recommended_tta"]]
    assert heads == ["class", "F1 val", "F1 val (flip TTA)", "F1 val (crops TTA)", test_head, "support val",
                     "support test"]


# --------------------------------------------------------------------------- each kind of output


def test_ingest_only_output(ingest_only):
    stats = json.loads((ingest_only / "stats.json").read_text())
    page = render(ingest_only)
    assert_self_contained(page, ingest_only)
    for heading in (
        "Data (ingest)",
        "Class balance",
        "Duplicates and leakage",
        "Image statistics per split",
        "Ingest settings",
    ):
        assert heading in page, heading
    assert "Training" not in page and "Predictions" not in page and "Models compared" not in page
    t = stats["totals"]
    assert (
        f"{t['matched']} matched = {t['written']} written + {t['rejected']} rejected + "
        f"{t['skipped_non_data']} skipped" in page
    )
    balance = table_after(page, "Class balance")
    assert balance[-1][-1] == f"{t['written']:,}"  # the grand total of the class x split table
    assert [row[0] for row in balance[1:-1]] == stats["labels"]
    assert "&#10007;" not in page  # no failed check


@needs_shipped
def test_train_only_output(train_only):
    page = render(train_only)
    assert_self_contained(page, train_only)
    for heading in ("Training", "Metrics of the exported (best) weights", "Training run", "History ("):
        assert heading in page, heading
    assert "Class balance" not in page and "Per-class metrics" not in page


@needs_shipped
def test_predict_only_output(predict_only):
    summary = json.loads((predict_only / "summary.json").read_text())
    page = render(predict_only)
    assert_self_contained(page, predict_only)
    for heading in (
        "Predictions",
        "Evaluation",
        "Confusion counts",
        "Per-class metrics",
        "Sample predictions",
        "Rejected inputs (dead-letter table)",
        "not_an_image",
    ):
        assert heading in page, heading
    assert "Class balance" not in page and "Metrics of the exported" not in page
    assert summary["totals"]["predicted"] == 6 and summary["totals"]["rejected"] == 1
    assert "6 rows in <code>predictions/*.parquet</code>" in page
    assert "&#10007;" not in page


@needs_shipped
def test_demo_layout_output(demo_like):
    page = render(demo_like)
    assert_self_contained(page, demo_like)
    anchors_resolve(page)
    for heading in (
        "Demo &amp; &lt;friends&gt;",
        "Overview",
        "Models compared",
        "Data: tiny",
        "Training: shipped",
        "Predictions A",
        "Predictions B",
    ):
        assert heading in page, heading
    # sections in the manifest's order
    assert page.index('<h2><span class="kind">ingest') < page.index('<h2><span class="kind">train')
    assert page.index("<h2><span class=\"kind\">train") < page.index("Predictions B</h2>")
    compare = table_after(page, "Models compared</h2>")
    assert [row[0] for row in compare[1:]] == ["Predictions A", "Predictions B"]
    assert [row[3] for row in compare[1:]] == ["none", "crops"]
    assert table_after(page, "Overview</h2>")[1] == ["ingest", "ok <b>bold</b>", "1.5"]


# --------------------------------------------------------------------------- escaping


@needs_shipped
def test_text_from_files_and_arguments_is_escaped(demo_like):
    page = render(demo_like, "--title", "A <script>alert('t')</script> & B")
    assert "<script" not in page.lower()
    title = page[page.index("<title>") : page.index("</title>")]
    assert title.startswith("<title>A &lt;script&gt;alert(") and title.endswith(")&lt;/script&gt; &amp; B")
    # a rejected file's name, from the dead-letter table
    assert "&lt;script&gt;alert(1) &amp; co.png" in page
    # manifest text
    assert "Note with &lt;i&gt;markup&lt;/i&gt; &amp; an ampersand." in page and "<i>markup" not in page
    assert "ok &lt;b&gt;bold&lt;/b&gt;" in page


def test_a_page_written_by_someone_else_is_not_replaced(ingest_only):
    (ingest_only / report.REPORT_NAME).write_text("<html>mine</html>")
    with pytest.raises(report.UsageError, match="not written by emotion report"):
        report.run(["--output", str(ingest_only)])
    (ingest_only / report.REPORT_NAME).unlink()
    render(ingest_only)
    render(ingest_only)  # its own page is replaced


def test_an_unreadable_part_loses_only_its_own_section(ingest_only, tmp_path):
    root = tmp_path / "both"
    shutil.copytree(ingest_only, root / "ingest")
    (root / "train").mkdir()
    (root / "train" / "metadata.json").write_text(json.dumps({"model_version": "v1", "metrics": {"val": "oops"}}))
    page = render(root)
    assert "This part could not be read: AttributeError" in page
    assert "Class balance" in page and page.count("<section") == 3  # overview, ingest, train


# --------------------------------------------------------------------------- unlabelled folders, faces, slices


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """The shipped model's predictions on 12 sample images in one folder that names no class."""
    from beam_pipelines.predict import launcher as predict

    images = tmp_path_factory.mktemp("unlabelled_faces")
    for label in ("happy", "sad", "angry"):
        for src in sorted((SAMPLE / label).glob("P*Test_*.jpg"))[:4]:
            shutil.copy(src, images / f"{label}_{src.name}")
    out = tmp_path_factory.mktemp("unlabelled_predictions") / "predict"
    predict.run(["--input", str(images), "--output", str(out), "--tta", "none"])
    return out


def test_an_unlabelled_folder_shows_what_was_predicted(unlabelled, tmp_path, caplog):
    folder = tmp_path / "predict"
    shutil.copytree(unlabelled, folder)
    page = render(folder)
    assert_self_contained(page, folder)
    assert "there is no accuracy" in page and "Evaluation" not in page
    mix = table_after(page, "What the model predicted")
    assert mix[0] == ["predicted class", "rows", "share"] and mix[-1][:2] == ["total", "12"]
    counts = {r[0]: int(r[1]) for r in mix[1:-1]}
    overview = json.loads((folder / "evaluation" / "overview.json").read_text())
    assert counts == overview["predicted_mix"] and sum(counts.values()) == 12
    assert sum(h["count"] for h in overview["confidence_histogram"]) == 12
    assert page.count('class="hist"') == 1 and "The least confident predictions" in page
    assert "Thumbnails per predicted class" in page


def test_the_console_line_says_why_there_is_no_accuracy(unlabelled, tmp_path, caplog):
    from beam_pipelines.predict import launcher as predict

    summary = json.loads((unlabelled / "summary.json").read_text())
    assert summary["labelled"] == 0 and summary["accuracy"] is None
    line = predict._scores_line(summary)
    assert "no accuracy" in line and "class folder" in line


def test_faces_abstention_and_slices_in_the_page(tmp_path):
    from beam_pipelines.predict import launcher as predict

    images = tmp_path / "in"
    (images / "happy").mkdir(parents=True)
    shutil.copy(REPO_DATA / "two_faces.jpg", images / "happy" / "group.jpg")
    for src in sorted((SAMPLE / "happy").glob("P*Test_*.jpg"))[:3]:
        shutil.copy(src, images / "happy" / src.name)
    (tmp_path / "slices.csv").write_text("uri,site\nhappy/group.jpg,north\n")
    out = tmp_path / "out"
    summary = predict.run(["--input", str(images), "--output", str(out), "--tta", "none", "--faces", "all",
                           "--min-confidence", "0.5", "--slices", str(tmp_path / "slices.csv")])
    page = render(out)
    assert_self_contained(page, out)
    faces = summary["totals"]["faces"]
    assert f"{faces} rows in <code>predictions/*.parquet</code> (a row per face" in page
    assert "&#10007;" not in page
    slices = table_after(page, "By your slices")
    assert [r[:3] for r in slices[1:]] == [["site", "north", "2"], ["site", "(none)", str(faces - 2)]]
    assert "Accuracy against coverage" in page and "abstained" in page


def test_the_compare_section_says_when_a_run_is_compared_with_itself(predictions, tmp_path):
    from beam_pipelines import compare

    out = tmp_path / "same"
    compare.run(["--a", str(predictions), "--b", str(predictions), "--output", str(out)])
    assert "are the same run" in render(out)


def test_one_unlabelled_prediction_is_singular(predictions, tmp_path):
    from beam_pipelines.predict import launcher as predict

    images = tmp_path / "in"
    (images / "happy").mkdir(parents=True)
    (images / "unsorted").mkdir()
    for src in sorted((SAMPLE / "happy").glob("P*Test_*.jpg"))[:2]:
        shutil.copy(src, images / "happy" / src.name)
    shutil.copy(src, images / "unsorted" / src.name)
    predict.run(["--input", str(images), "--output", str(tmp_path / "out"), "--tta", "none"])
    page = render(tmp_path / "out")
    assert "1 has none" in page and "1 have none" not in page


def test_the_confusion_counts_are_shown_as_text_not_only_in_the_plot(predict_only):
    page = render(predict_only)
    assert "<details open><summary>Confusion counts" in page
    counts = table_after(page, "Confusion counts")
    metrics = json.loads((predict_only / "evaluation" / "metrics.json").read_text())
    assert [[int(c) for c in row[1:-1]] for row in counts[1:-1]] == metrics["confusion"]
