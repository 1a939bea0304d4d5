"""Safe by construction (issue 17): one gate for every path a run writes or removes.

Each row of the audit is a probe here: a manifest, a metadata file, a link or a name that points
outside the run's folders; a table that cannot be written; two writers at once; a user's files in a
model directory; names that break paths; and the user mistakes that used to end in tracebacks. Small
data (14 synthetic faces, the shipped model), seconds each. The gate's own API is tested first.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SHIPPED_MODEL, make_split_tree

from beam_pipelines import cli
from beam_pipelines.base import manifest as run_manifest
from beam_pipelines.predict import launcher as predict
from beam_pipelines.table import claim
from model import gate, ownership
from model.errors import UsageError
from model.gate import Gate, PathRefused, RootLock


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes); {} when root does not exist."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_manifest_lists_exactly_its_files(out: pathlib.Path, names) -> None:
    """The invariant a fault harness checks after any run: _run.json lists exactly the files under the
    stage's names, and no staging is left behind."""
    manifest = json.loads((out / run_manifest.MANIFEST).read_text())
    present = sorted(str(p.relative_to(out)) for name in names for p in
                     ([out / name] if (out / name).is_file() else (out / name).rglob("*")) if p.is_file())
    assert sorted(f for f in manifest["files"] if f.split("/")[0] in names) == present
    assert manifest["state"] == "complete" and not (out / run_manifest.STAGING).exists()


@contextlib.contextmanager
def read_only(path: pathlib.Path):
    """A folder nobody may write, root included (chattr +i when the tests run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with immutable(path):
        yield path


@contextlib.contextmanager
def immutable(path: pathlib.Path):
    """A file or folder nobody may change, root included (chattr +i); skipped where chattr cannot."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"cannot make {path.name} immutable here (chattr +i)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("gate_faces")
    make_split_tree(root, per_class=2, splits=("test",))
    return root / "test"


@pytest.fixture(scope="module")
def first_run(faces, tmp_path_factory) -> dict:
    """One predict output and its table (run id `first`), to copy and probe."""
    tmp = tmp_path_factory.mktemp("gate_first")
    out, root = tmp / "out", tmp / "table"
    predict.run(["--input", str(faces), "--output", str(out), "--table", str(root), "--run-id", "first"])
    return {"out": out, "table": root}


def copies(first_run, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    out, root = tmp_path / "out", tmp_path / "table"
    shutil.copytree(first_run["out"], out)
    shutil.copytree(first_run["table"], root)
    return out, root


def predict_cli(*args) -> int:
    return cli.main(["predict", *map(str, args)])


# =========================================================================== the gate itself


def test_the_gate_refuses_every_path_outside_its_roots(tmp_path):
    root, victim = tmp_path / "out", tmp_path / "victim"
    (root / "sub").mkdir(parents=True)
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (root / "escape").symlink_to(victim, target_is_directory=True)
    g = Gate([str(root)])
    for path in (f"{root}/../victim/keep.txt", str(victim / "keep.txt"), f"{root}/escape/keep.txt", str(root),
                 "/", f"{root}/sub/../../victim"):
        with pytest.raises(PathRefused, match="outside this run's folders"):
            g.remove(path) if not path.endswith("victim") else g.remove_tree(path)
    with pytest.raises(PathRefused):
        g.move(str(root / "sub"), f"{root}/escape/moved")
    with pytest.raises(PathRefused):
        g.write_bytes(f"{root}/escape/new.txt", b"x")
    assert snapshot(victim) == {"keep.txt": b"precious"}
    # A link inside the root is removed as a link: its target is untouched.
    g.remove(str(root / "escape"))
    assert not (root / "escape").exists() and (victim / "keep.txt").read_text() == "precious"
    # gs:// paths: the same check on the object name; '.' and '..' segments are refused outright.
    remote = Gate(["gs://bucket/out"])
    assert remote.inside("gs://bucket/out/a/b.parquet") == "gs://bucket/out/a/b.parquet"
    for path in ("gs://bucket/out/../victim/x", "gs://bucket/outside/x", "gs://bucket/out", "gs://other/out/x"):
        with pytest.raises(PathRefused):
            remote.inside(path)
    with pytest.raises(PathRefused, match="root"):
        Gate(["/"])


def test_a_write_through_the_gate_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    root, victim = tmp_path / "out", tmp_path / "victim.txt"
    root.mkdir()
    victim.write_text("precious")
    (root / "summary.json").symlink_to(victim)
    Gate([str(root)]).write_bytes(str(root / "summary.json"), b"{}")
    assert victim.read_text() == "precious" and (root / "summary.json").read_bytes() == b"{}"
    assert not (root / "summary.json").is_symlink() and sorted(os.listdir(root)) == ["summary.json"]


def test_a_transaction_is_undone_step_by_step_and_finishes_by_removing_what_it_replaced(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "data").mkdir(parents=True)
        (root / "data" / "old.txt").write_text(f"old {root.name}")
        (root / "staged.txt").write_text(f"new {root.name}")
    before = {root.name: snapshot(root) for root in (a, b)}
    g = Gate([str(a), str(b)])
    trash = {str(a): str(a / "_trash"), str(b): str(b / "_trash")}
    with pytest.raises(RuntimeError, match="disk full"):
        with g.transaction(trash) as tx:
            tx.move(str(a / "staged.txt"), str(a / "data" / "old.txt"))
            tx.move(str(b / "staged.txt"), str(b / "new" / "deep" / "file.txt"))
            tx.write_bytes(str(a / "_run.json"), b"{}")
            raise RuntimeError("disk full")
    assert {root.name: snapshot(root) for root in (a, b)} == before
    assert not (b / "new").exists() and not (a / "_trash").exists()

    with g.transaction(trash) as tx:
        tx.move(str(a / "staged.txt"), str(a / "data" / "old.txt"))
        tx.retire(str(b / "data"))
    assert snapshot(a) == {"data/old.txt": b"new a"} and snapshot(b) == {"staged.txt": b"new b"}
    assert not (a / "_trash").exists() and not (b / "_trash").exists()


@pytest.mark.parametrize("name", ["a%41b", "a\nb", "x" * 300, "../x", ".hidden", "-rf", "a/b", "", "café"])
def test_unsafe_names_are_refused_where_they_enter(name):
    assert gate.name_problem(name)
    with pytest.raises(UsageError, match="cannot name a folder"):
        gate.check_name(name, "--run-id")


def test_safe_names_pass():
    for name in ("predict-20260101T000000Z-deadbeef", "batch-0412", "vgg_m-c3c7b264a958", "a" * 128, "v1.2"):
        assert gate.check_name(name, "name") == name


# Raw calls that delete, move or link: only model/gate/ may make them.
RAW = re.compile(r"shutil\.(rmtree|move)\(|\bos\.(remove|unlink|rename|replace|rmdir|removedirs|symlink)\(|"
                 r"FileSystems\.(delete|rename)\(|gfile\.(remove|rmtree|rename)\(|\.unlink\(|\.rmdir\(|"
                 r"\bblob\.delete\(")


def test_no_code_outside_the_gate_deletes_moves_or_links_files():
    offenders = []
    for folder in ("beam_pipelines", "model", "schemas", "deploy", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.parent == REPO / "model" / "gate":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if RAW.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# =========================================================================== D1: untrusted manifests


@pytest.mark.parametrize("manifest", [
    {"staging": "../../victim"},
    {"staging": "_staging/../../victim"},
    {"files": ["tfrecords/../../victim/keep.txt"]},
    {"files": ["/VICTIM/keep.txt"]},
    {"files": "tfrecords/x"},
    ["not", "an", "object"],
], ids=["staging_up", "staging_escape", "files_up", "files_absolute", "files_not_a_list", "not_an_object"])
def test_a_manifest_pointing_outside_the_output_is_refused_before_anything_is_removed(capsys, tmp_path, manifest):
    raw, out, victim = tmp_path / "raw", tmp_path / "work" / "out", tmp_path / "victim"
    make_split_tree(raw, per_class=1, splits=("train",))
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    out.mkdir(parents=True)
    if isinstance(manifest, dict):
        manifest = {"run_id": "ingest-x", "stage": "ingest", "state": "complete", "files": [], **manifest}
        manifest["files"] = [f.replace("/VICTIM", str(victim)) for f in manifest["files"]] \
            if isinstance(manifest["files"], list) else manifest["files"]
    (out / run_manifest.MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(out)
    code = cli.main(["ingest", "--input", str(raw), "--output", str(out)])
    one_line_error(capsys, code, "not written by this pipeline" if isinstance(manifest, dict) else "not a manifest")
    assert snapshot(victim) == {"keep.txt": b"precious"} and snapshot(out) == before


def test_a_link_planted_under_a_stage_name_is_not_followed_by_a_remove(capsys, tmp_path):
    """Defence in depth: the manifest is well-formed, but tfrecords/ is now a link out of --output."""
    raw, out, victim = tmp_path / "raw", tmp_path / "out", tmp_path / "victim"
    make_split_tree(raw, per_class=1, splits=("train",))
    victim.mkdir()
    (victim / "a.tfrecord").write_bytes(b"precious")
    out.mkdir()
    (out / "tfrecords").symlink_to(victim, target_is_directory=True)
    (out / run_manifest.MANIFEST).write_text(json.dumps({"run_id": "ingest-x", "state": "complete",
                                                    "files": ["tfrecords/a.tfrecord"]}))
    code = cli.main(["ingest", "--input", str(raw), "--output", str(out), "--overwrite"])
    one_line_error(capsys, code, "outside this run's folders")
    assert snapshot(victim) == {"a.tfrecord": b"precious"}


# =========================================================================== D2: all or nothing


def _parent_is_file(tmp):
    (tmp / "notes.txt").write_text("a file")
    return tmp / "notes.txt" / "table"


def _bigquery_file(tmp):
    (tmp / "t").mkdir()
    (tmp / "t" / "_bigquery").write_text("the user's own file")
    return tmp / "t"


@pytest.mark.parametrize("make_table", [_parent_is_file, _bigquery_file, "read_only"],
                         ids=["parent_is_a_file", "bigquery_is_a_user_file", "read_only_root"])
def test_a_table_that_cannot_be_written_leaves_output_and_table_as_they_were(capsys, first_run, faces, tmp_path,
                                                                              make_table):
    out, _ = copies(first_run, tmp_path)
    before = snapshot(out)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(read_only(tmp_path / "ro")) if make_table == "read_only" else make_table(tmp_path)
        table_before = snapshot(root) if root.is_dir() else None
        code = predict_cli("--input", faces, "--output", out, "--table", root, "--run-id", "second")
        one_line_error(capsys, code, "--table")
        assert snapshot(out) == before
        assert (snapshot(root) if root.is_dir() else None) == table_before


def test_a_commit_failing_in_the_table_undoes_the_output_too(first_run, faces, tmp_path, monkeypatch):
    """Both destinations staged, the output moved into place, then the table's last write fails: the
    transaction puts every file back, in the output and in the table, byte for byte."""
    out, root = copies(first_run, tmp_path)
    before, table_before = snapshot(out), snapshot(root)
    real = gate.Transaction.write_bytes

    def failing(self, path, data):
        if "/_runs/" in path:
            raise OSError("disk full while writing the runs row")
        return real(self, path, data)

    monkeypatch.setattr(gate.Transaction, "write_bytes", failing)
    with pytest.raises(Exception, match="disk full"):
        predict.run(["--input", str(faces), "--output", str(out), "--table", str(root), "--run-id", "first",
                     "--tta", "flip"])
    assert snapshot(out) == before and snapshot(root) == table_before
    monkeypatch.undo()
    assert_manifest_lists_exactly_its_files(out, predict.OUTPUT_NAMES)


# =========================================================================== D3, D5: one writer per root


def test_a_second_writer_of_a_table_is_refused_naming_the_holder(capsys, faces, tmp_path):
    root, out = tmp_path / "table", tmp_path / "out"
    holder = RootLock(str(root), "predict-holder", flag="--table", name=claim.LOCK)
    holder.acquire()
    try:
        code = predict_cli("--input", faces, "--output", out, "--table", root, "--run-id", "dup")
        one_line_error(capsys, code, f"--table {root} is in use by run predict-holder")
        assert not out.exists()
    finally:
        holder.release()
    assert not root.exists()  # the holder created it for its lock, and took it away again


@pytest.fixture(scope="module")
def ingest_ok(tmp_path_factory):
    from test_model_safety import _write_ingest

    from schemas import LABELS

    root = tmp_path_factory.mktemp("gate_ingest")
    _write_ingest(root, {"train": {label: 6 for label in LABELS}, "val": {label: 2 for label in LABELS}})
    return root


def train_cli(data, model_dir, *more) -> int:
    return cli.main(["train", "--data", str(data), "--model-dir", str(model_dir), "--arch", "vgg_xs", "--epochs", "1",
                     "--batch-size", "8", "--mixed-precision", "off", *map(str, more)])


def test_a_second_training_into_a_model_dir_is_refused_naming_the_holder(capsys, ingest_ok, tmp_path):
    model_dir = tmp_path / "model"
    holder = RootLock(str(model_dir), "train-holder", flag="--model-dir", name=ownership.LOCK)
    holder.acquire()
    try:
        one_line_error(capsys, train_cli(ingest_ok, model_dir), f"--model-dir {model_dir} is in use by run train-holder")
        assert sorted(os.listdir(model_dir)) == [ownership.LOCK]
    finally:
        holder.release()


# =========================================================================== D4: training owns its folder


def test_training_refuses_a_model_dir_holding_a_users_files(capsys, ingest_ok, tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "export").mkdir(parents=True)
    (model_dir / "export" / "my_notes.txt").write_text("notes")
    (model_dir / "history.csv").write_text("date,weight\n2026-01-01,70\n")
    (model_dir / "MODEL_CARD.md").write_text("my card")
    (model_dir / "README.txt").write_text("outside training's names: never looked at")
    before = snapshot(model_dir)
    line = one_line_error(capsys, train_cli(ingest_ok, model_dir), "3 file(s) no training or export wrote",
                          "--overwrite")
    assert "MODEL_CARD.md" in line and "export/my_notes.txt" in line and "history.csv" in line
    assert snapshot(model_dir) == before


def test_an_export_never_replaces_a_users_files_under_its_names(tmp_path):
    """export() itself (not only `emotion train`) checks before its commit: export/ holds a user's file."""
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model_dir, ignore=shutil.ignore_patterns(".gitignore"))  # the repo's file
    ownership.check_export_owned(str(model_dir))  # an export from before manifests: recognised by name
    (model_dir / "export" / "my_notes.txt").write_text("notes")
    with pytest.raises(UsageError, match="1 file.*export/my_notes.txt"):
        ownership.check_export_owned(str(model_dir))
    ownership.record(str(model_dir), adopt=("metadata.json",), create=True)  # what a write_metadata records
    assert json.loads((model_dir / ownership.MANIFEST).read_text())["files"] == ["metadata.json"]


# =========================================================================== W2, T: untrusted model metadata


@pytest.mark.parametrize("edit,needle", [
    ({"model_version": "v1/../../../../escaped"}, "model_version"),
    ({"recommended_tta": "bogus"}, "recommended_tta"),
], ids=["model_version_escapes", "tta_bogus"])
def test_a_hand_edited_metadata_file_is_refused_before_anything_is_written(capsys, faces, tmp_path, edit, needle):
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model_dir)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    (model_dir / "metadata.json").write_text(json.dumps({**metadata, **edit}))
    root, out = tmp_path / "work" / "table", tmp_path / "work" / "out"
    code = predict_cli("--input", faces, "--output", out, "--table", root, "--model", model_dir)
    one_line_error(capsys, code, needle, "re-export")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # neither --output nor --table was created


# =========================================================================== W4, T1: temp links


def test_a_planted_temp_link_is_never_reused_and_a_relative_glob_output_works(faces, tmp_path, monkeypatch):
    """The old write root was $TMPDIR/emotion-<run id>, reused if it existed, with the staging path as
    given (relative: a dangling link). Now: a fresh mkdtemp folder, an absolute target. Batch size 4
    (below RunInference's old minimum of 8) is a legitimate choice."""
    import tempfile

    tmpdir, victim = tmp_path / "tmpdir", tmp_path / "victim"
    tmpdir.mkdir()
    victim.mkdir()
    (tmpdir / "emotion-planted").symlink_to(victim, target_is_directory=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(tmp_path)
    summary = predict.run(["--input", str(faces), "--output", "out/faces [2024]", "--run-id", "planted",
                           "--batch-size", "4"])
    assert summary["totals"]["predicted"] == 14
    assert snapshot(victim) == {}
    out = tmp_path / "out" / "faces [2024]"
    assert list((out / "predictions").glob("*.parquet"))
    assert_manifest_lists_exactly_its_files(out, predict.OUTPUT_NAMES)
    assert [n for n in os.listdir(tmpdir) if n.startswith("emotion-")] == ["emotion-planted"]  # its own is gone


# =========================================================================== T: one line and exit 2


def test_output_that_is_a_file_or_under_a_file_is_one_line(capsys, tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=1, splits=("train",))
    (tmp_path / "file.txt").write_text("a file")
    one_line_error(capsys, cli.main(["ingest", "--input", str(raw), "--output", str(tmp_path / "file.txt")]),
                   "is a file, not a folder")
    one_line_error(capsys, cli.main(["ingest", "--input", str(raw), "--output", str(tmp_path / "file.txt" / "out")]),
                   "cannot create --output")
    assert (tmp_path / "file.txt").read_text() == "a file"


@pytest.mark.parametrize("stage", ["ingest", "predict", "compare", "report", "train"])
def test_a_read_only_output_is_one_line_at_every_stage(capsys, stage, first_run, faces, ingest_ok, tmp_path):
    raw = tmp_path / "raw"
    if stage == "ingest":
        make_split_tree(raw, per_class=1, splits=("train",))
    folder = tmp_path / "ro"
    if stage == "report":
        shutil.copytree(first_run["out"], folder)
    with read_only(folder):
        before = snapshot(folder)
        argv = {
            "ingest": ["ingest", "--input", str(raw), "--output", str(folder)],
            "predict": ["predict", "--input", str(faces), "--output", str(folder)],
            "compare": ["compare", "--a", str(first_run["out"]), "--b", str(first_run["out"]), "--output", str(folder)],
            "report": ["report", "--output", str(folder)],
            "train": ["train", "--data", str(ingest_ok), "--model-dir", str(folder), "--arch", "vgg_xs",
                      "--epochs", "1", "--batch-size", "8", "--mixed-precision", "off"],
        }[stage]
        one_line_error(capsys, cli.main(argv))
        assert snapshot(folder) == before


def test_compare_on_foreign_parquet_is_one_line(capsys, first_run, tmp_path):
    foreign = tmp_path / "theirs" / "predictions"
    foreign.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "score": [0.5, 0.7]}), foreign / "part.parquet")
    code = cli.main(["compare", "--a", str(first_run["out"]), "--b", str(foreign.parent), "--output", str(tmp_path / "c")])
    one_line_error(capsys, code, "is not a predictions file of emotion predict")
    (foreign / "part.parquet").write_bytes(b"PAR1 not really")
    code = cli.main(["compare", "--a", str(first_run["out"]), "--b", str(foreign.parent), "--output", str(tmp_path / "c")])
    one_line_error(capsys, code, "cannot be read as Parquet")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("case", ["batch_size_0", "mistyped_option", "beam_option_typo"])
def test_bad_options_are_one_line(capsys, faces, tmp_path, case):
    extra = {"batch_size_0": ["--batch-size", "0"], "mistyped_option": ["--face-crp"],
             "beam_option_typo": ["--direct_num_workerz", "2"]}[case]
    out = tmp_path / "out"
    code = predict_cli("--input", faces, "--output", out, *extra)
    one_line_error(capsys, code, "--batch-size" if case == "batch_size_0" else "unrecognized argument")
    assert not out.exists()
    # Beam's own options still pass through (parsed only: nothing runs).
    args, beam_args = predict.parse_args(["--input", "x", "--output", "y", "--direct_num_workers", "2",
                                          "--runner=DirectRunner", "--experiments", "a", "--experiments=b"])
    assert beam_args == ["--direct_num_workers", "2", "--runner=DirectRunner", "--experiments", "a", "--experiments=b"]
    code = cli.main(["ingest", "--input", str(faces), "--output", str(out), "--val-fractoin", "0.2"])
    one_line_error(capsys, code, "unrecognized argument: --val-fractoin")


@pytest.mark.parametrize("stage", ["ingest", "predict"])
@pytest.mark.parametrize("flag, value, words", [("--files-per-batch", "0", "--files-per-batch must be at least 1"),
                                                ("--max-pixels", "0", "--max-pixels must be between 1 and")])
def test_the_run_flags_are_refused_alike_by_both_stages(capsys, faces, tmp_path, stage, flag, value, words):
    """--files-per-batch, --max-pixels, --overwrite and --quiet are one declaration (base.runner.add_run_flags)
    with one check: both stages refuse a bad value with the same line, before touching --output."""
    out = tmp_path / "out"
    one_line_error(capsys, cli.main([stage, "--input", str(faces), "--output", str(out), flag, value]),
                   f"emotion {stage}: error: {words}")
    assert not out.exists()


def _damage_first_train_record(data):
    path = data / "tfrecords" / "train-00000-of-00001.tfrecord"
    raw = bytearray(path.read_bytes())
    raw[0:8] = (1 << 40).to_bytes(8, "little")  # a length no record has
    path.write_bytes(bytes(raw))


def _damage_a_later_train_record(data):
    path = data / "tfrecords" / "train-00000-of-00001.tfrecord"
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0x55
    path.write_bytes(bytes(raw))


def _edit_image_size(data):
    stats = json.loads((data / "stats.json").read_text())
    (data / "stats.json").write_text(json.dumps({**stats, "image_size": 64}))


def _weights_not_h5(data):
    (data.parent / "w.weights.h5").write_text("not an HDF5 file")
    return ["--init-weights", data.parent / "w.weights.h5"]


def _weights_of_another_arch(data):
    import keras

    from model import archs

    keras.utils.set_random_seed(0)
    archs.build("vgg_s", 48, 7).save_weights(str(data.parent / "s.weights.h5"))
    return ["--init-weights", data.parent / "s.weights.h5"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras on the weights of another architecture
@pytest.mark.parametrize("damage,needle", [
    (_damage_first_train_record, "damaged shard"),
    (_damage_a_later_train_record, "damaged TFRecord shard"),
    (_edit_image_size, "says image_size 64"),
    (_weights_not_h5, "cannot be loaded into --arch vgg_xs"),
    (_weights_of_another_arch, "cannot be loaded into --arch vgg_xs"),
], ids=["tfrecord_header", "tfrecord_body", "stats_image_size", "init_weights_not_h5", "init_weights_other_arch"])
def test_training_mistakes_are_one_line(capsys, ingest_ok, tmp_path, damage, needle):
    data = tmp_path / "data"
    shutil.copytree(ingest_ok, data)
    more = damage(data) or []
    model_dir = tmp_path / "model"
    one_line_error(capsys, train_cli(data, model_dir, "--no-augment", *more), needle)
    if model_dir.exists():  # refused after its claim: the manifest lists exactly what training wrote
        manifest = json.loads((model_dir / ownership.MANIFEST).read_text())
        assert manifest["state"] == "failed" and manifest["files"] == ownership.present(str(model_dir))


def test_a_damaged_tfrecord_input_of_predict_is_one_line_without_a_hex_dump(capsys, ingest_ok, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ingest_ok, data)
    _damage_a_later_train_record(data)
    out = tmp_path / "out"
    line = one_line_error(capsys, predict_cli("--input", data, "--output", out), "damaged TFRecord")
    assert len(line) < 400 and not out.exists()


def test_ctrl_c_during_predict_is_one_line_and_exit_130(faces, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "beam_pipelines.cli", "predict", "--input", str(faces),
                             "--output", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = []
    for line in proc.stderr:  # interrupted once the run has started (its claim made, its pipeline starting)
        lines.append(line)
        if "predict:" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "emotion predict: interrupted"
    assert not out.exists() or sorted(os.listdir(out)) in ([], [run_manifest.MANIFEST])


def test_a_write_the_file_system_refuses_midway_is_one_line_and_changes_nothing(capsys, first_run, faces, tmp_path):
    """Found by the fault harness: the refusal comes from inside the pipeline's commit (Beam wraps it in
    its own exception), after staging; it is still the user's to fix, and the output stays as it was."""
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    with immutable(out / "summary.json"):
        before = snapshot(out)
        line = one_line_error(capsys, cli.main(["predict", "--input", str(faces), "--output", str(out)]),
                              "cannot", "summary.json")
        assert "Operation not permitted" in line
        assert snapshot(out) == before
    (out / run_manifest.STAGING).write_bytes(b"a file where the staging folder goes")
    before = snapshot(out)
    line = one_line_error(capsys, cli.main(["predict", "--input", str(faces), "--output", str(out)]),
                          "Not a directory: " + str(out / run_manifest.STAGING / ""))
    assert "'" not in line and "//" not in line  # the path as it is (not repr()'d), one slash between parts
    assert snapshot(out) == before
