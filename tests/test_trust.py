"""Nothing read back from disk is trusted (issue 26): journals, manifests, lock files, runs-table files
and array files are untrusted input, paths are stored canonical, and the OS's refusals are one line.

One probe per row of the fourth audit (L1..L17; L11 is model/quantize.py's and tested there). Each is
what a hostile but realistic user tried: a lock file that is a hard link, a link, a FIFO or the user's
own; a commit killed and recovered from another working folder or spelling of the root; journal entries
planted or damaged; a runs-table row copied from another run; the user's files under the table's own
names; a file-size limit; a path past PATH_MAX; a decompression bomb as --arrays. Small data, seconds
each (the killed commits run a real `emotion ingest`/`predict` child).
"""

from __future__ import annotations

import json
import lzma
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, SHIPPED_MODEL, make_split_tree
from test_commit_journal import DYING_RUN
from test_gate import one_line_error, snapshot

from beam_pipelines import cli
from beam_pipelines.base import killed_runs
from beam_pipelines.base import manifest as run_manifest
from beam_pipelines.predict import launcher as predict
from beam_pipelines.table import claim, partitions
from model import gate
from model.errors import UsageError
from model.gate import Gate, RootLock


def dying_run(die_at: str, *args, cwd=REPO) -> subprocess.CompletedProcess:
    """`emotion ARGS` in a child whose commit dies (os._exit: a kill) at DIE_AT, run from `cwd`."""
    env = {**os.environ, "DIE_AT": die_at, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", DYING_RUN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def results(out: pathlib.Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(out).items() if k != run_manifest.LOCK}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    first, second = base / "first", base / "second"
    make_split_tree(first, per_class=2, splits=("train", "test"), seed=1)
    make_split_tree(second, per_class=3, splits=("train", "test"), seed=2)
    return first, second


@pytest.fixture(scope="module")
def committed_ingest(inputs, tmp_path_factory):
    """An ingest output, to copy into each test."""
    out = tmp_path_factory.mktemp("trust_ingest") / "out"
    assert cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out), "--quiet"]) == 0
    return out


def killed_in_commit(committed_ingest, inputs, tmp_path, die_at="after-3", cwd=None, output=None) -> pathlib.Path:
    """A copy of the committed output, then an ingest into it killed inside its commit."""
    out = tmp_path / "out"
    shutil.copytree(committed_ingest, out)
    killed = dying_run(die_at, "ingest", "--input", str(inputs[1]), "--output", output or str(out), "--quiet",
                       cwd=cwd or REPO)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert json.loads((out / run_manifest.MANIFEST).read_text())["state"] == "committing"
    return out


# =========================================================================== L1, L2, L8, L16: lock files


@pytest.mark.parametrize("name", [run_manifest.LOCK, claim.LOCK])
def test_L1_a_lock_file_hard_linked_to_a_users_file_is_refused_and_the_file_untouched(tmp_path, name):
    root, victim = tmp_path / "root", tmp_path / "victim.txt"
    root.mkdir()
    victim.write_text("the user's precious notes\n")
    os.link(victim, root / name)
    with pytest.raises(UsageError, match="links") as refused:
        RootLock(str(root), "r1", flag="--output", name=name).acquire()
    assert "\n" not in str(refused.value)
    assert victim.read_text() == "the user's precious notes\n" and (root / name).exists()


def test_L1_through_the_command_line_one_line_and_nothing_written(capsys, tmp_path, inputs):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("mine\n")
    os.link(victim, out / run_manifest.LOCK)
    one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out)]), run_manifest.LOCK)
    assert victim.read_text() == "mine\n" and sorted(os.listdir(out)) == [run_manifest.LOCK]


def test_L2_a_users_own_file_named_like_the_lock_is_refused_never_truncated_or_removed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / run_manifest.LOCK).write_text("my own file, which happens to have this name\n")
    with pytest.raises(UsageError, match="not a lock file this tool wrote"):
        RootLock(str(root), "r1").acquire()
    assert (root / run_manifest.LOCK).read_text() == "my own file, which happens to have this name\n"
    (root / run_manifest.LOCK).write_text("")  # empty: not one of ours either (ours always names its holder)
    with pytest.raises(UsageError, match="not a lock file this tool wrote"):
        RootLock(str(root), "r1").acquire()
    assert (root / run_manifest.LOCK).exists()


def test_L2_a_dead_runs_lock_is_taken_over_and_removed_at_the_end(tmp_path):
    """The other side of L2: a lock this tool wrote (its holder dead) is still taken over."""
    root = tmp_path / "root"
    root.mkdir()
    dead = {"tool": "emotion-pipeline", "run_id": "dead", "host": "h", "pid": 999999, "started": "then"}
    (root / run_manifest.LOCK).write_text(json.dumps(dead) + "\n")
    lock = RootLock(str(root), "r2")
    lock.acquire()
    holder = json.loads((root / run_manifest.LOCK).read_text())
    assert holder["run_id"] == "r2" and holder["root"] == os.path.realpath(root)  # canonical root
    lock.release()
    assert not (root / run_manifest.LOCK).exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_L8_a_link_fifo_or_folder_as_the_lock_is_refused_in_one_line_without_opening_it(tmp_path, kind):
    root, target = tmp_path / "root", tmp_path / "target.txt"
    root.mkdir()
    target.write_text("x")
    path = root / claim.LOCK
    {"symlink": lambda: path.symlink_to(target), "fifo": lambda: os.mkfifo(path), "folder": path.mkdir}[kind]()
    started = time.time()
    with pytest.raises(UsageError, match="not a lock file this tool wrote") as refused:
        RootLock(str(root), "r1", flag="--table", name=claim.LOCK).acquire()
    assert time.time() - started < 5 and "\n" not in str(refused.value)
    assert target.read_text() == "x"


def test_L16_a_lock_held_with_no_readable_holder_says_so_instead_of_none(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    path = root / run_manifest.LOCK
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "os.write(fd, b'garbage, no json')\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError) as busy:
            RootLock(str(root), "r1").acquire()
        message = str(busy.value)
        assert "None" not in message and "does not name it" in message, message
    finally:
        holder.kill()
        holder.wait()


# =========================================================================== L3-L7: the journal


def test_L3_a_commit_killed_with_a_relative_output_is_rolled_back_from_another_folder(
        committed_ingest, inputs, tmp_path, capsys):
    """The journal stores each path as (root, path relative to it): the same from any working folder."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    before = results(committed_ingest)
    out = killed_in_commit(committed_ingest, inputs, tmp_path, cwd=here, output="../out")
    header = json.loads(next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}/header.json")).read_text())
    assert header["roots"]["output"] == os.path.realpath(out)
    step = json.loads(next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}/000000.json")).read_text())
    assert step["a"][0] == "output" and not step["a"][1].startswith("/")
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        assert killed_runs.recover(os.path.relpath(out, elsewhere)) is True
    finally:
        os.chdir(cwd)
    assert results(out) == {k: v for k, v in before.items()}
    assert not (out / run_manifest.STAGING).exists()


def test_L3_L4_a_predict_killed_in_its_commit_is_rolled_back_through_other_spellings_of_both_roots(tmp_path, capsys):
    raw, out, root = tmp_path / "raw", tmp_path / "preds", tmp_path / "table"
    make_split_tree(raw, per_class=1, splits=("test",))
    base = ["predict", "--input", str(raw), "--model", str(SHIPPED_MODEL), "--quiet"]
    assert cli.main([*base, "--output", str(out), "--table", str(root), "--run-id", "first"]) == 0
    before_out, before_table = results(out), snapshot(root)
    workdir = tmp_path / "work"
    workdir.mkdir()
    killed = dying_run("manifest", *base, "--output", "../preds", "--table", "../table", "--run-id", "second",
                       cwd=workdir)
    assert killed.returncode == 137, killed.stderr[-2000:]
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)  # another spelling of both roots
    alias = tmp_path / "alias"
    assert killed_runs.recover(f"{alias}/./preds/", also_roots=[f"{alias}/table"]) is True
    assert results(out) == before_out
    assert {k: v for k, v in snapshot(root).items() if not k.startswith((claim.STAGING, claim.LOCK))} == before_table
    assert cli.main([*base, "--output", str(alias / "preds"), "--table", str(alias / "table"), "--run-id", "third"]) == 0
    assert sorted(p.name for p in (root / claim.RUNS).iterdir()) == ["first.parquet", "third.parquet"]


def plant(out: pathlib.Path, name: str, value) -> None:
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    (journal / name).write_text(value if isinstance(value, str) else json.dumps(value))


def test_L5_planted_journal_entries_are_not_acted_on(committed_ingest, inputs, tmp_path, capsys):
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    (out / "NOTES.txt").write_text("the user's notes in the output\n")
    run_id = json.loads((out / run_manifest.MANIFEST).read_text())["run_id"]
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    n = len(list(journal.glob("0*.json")))
    # a "new" step naming the user's file, with a digest that is not its content
    plant(out, f"{n:06d}.json", {"run_id": run_id, "seq": n, "kind": "new", "a": ["output", "NOTES.txt"], "b": None,
                                 "created": [], "digest": "sha256:" + "0" * 64})
    mixed = results(out)
    assert killed_runs.recover(str(out)) is True  # the real steps undone, the planted one left alone
    assert (out / "NOTES.txt").read_text() == "the user's notes in the output\n"
    assert {k: v for k, v in results(out).items() if k != "NOTES.txt"} == results(committed_ingest)
    assert mixed != results(out)


@pytest.mark.parametrize("planted", ["move_of_a_users_file", "step_of_another_run", "null_previous_manifest",
                                     "header_of_another_run"])
def test_L5_a_journal_that_cannot_be_proven_this_runs_own_changes_nothing(committed_ingest, inputs, tmp_path,
                                                                          capsys, planted):
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    (out / "NOTES.txt").write_text("the user's notes\n")
    run_id = json.loads((out / run_manifest.MANIFEST).read_text())["run_id"]
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    n = len(list(journal.glob("0*.json")))
    header = json.loads((journal / "header.json").read_text())
    if planted == "move_of_a_users_file":
        plant(out, f"{n:06d}.json", {"run_id": run_id, "seq": n, "kind": "move", "a": ["output", "NOTES.txt"],
                                     "b": ["output", f"{run_manifest.STAGING}/{run_id}/.retired/9/NOTES.txt"],
                                     "created": [], "digest": "f:1:2:3"})
    elif planted == "step_of_another_run":
        step = json.loads((journal / "000000.json").read_text())
        plant(out, "000000.json", {**step, "run_id": "ingest-someone-else"})
    elif planted == "null_previous_manifest":
        plant(out, "header.json", {**header, "previous_manifest": None})
    else:
        plant(out, "header.json", {**header, "run_id": "ingest-someone-else"})
    mixed, manifest = results(out), (out / run_manifest.MANIFEST).read_bytes()
    capsys.readouterr()
    line = one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out)]),
                          "killed while committing")
    assert "nothing was rolled back" in line
    assert results(out) == mixed and (out / run_manifest.MANIFEST).read_bytes() == manifest
    assert (out / "NOTES.txt").read_text() == "the user's notes\n"


@pytest.mark.parametrize("header", ["[]", None, "{not json"])
def test_L6_a_missing_or_malformed_header_does_nothing_and_says_so(committed_ingest, inputs, tmp_path, capsys, header):
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    if header is None:
        (journal / "header.json").unlink()
    else:
        (journal / "header.json").write_text(header)
    mixed, manifest = results(out), (out / run_manifest.MANIFEST).read_bytes()
    capsys.readouterr()
    line = one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out)]),
                          "nothing was rolled back")
    assert "header" in line
    assert results(out) == mixed and (out / run_manifest.MANIFEST).read_bytes() == manifest  # _run.json kept
    # --overwrite: the user's answer; the run replaces the output's files and commits.
    assert cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out), "--overwrite", "--quiet"]) == 0
    assert json.loads((out / run_manifest.MANIFEST).read_text())["state"] == "complete"


def test_L7_a_fifo_in_the_journal_is_refused_never_opened(committed_ingest, inputs, tmp_path, capsys):
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    os.mkfifo(journal / "000050.json")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", cli.main(
        ["ingest", "--input", str(inputs[0]), "--output", str(out)])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the run blocked on the FIFO"
    one_line_error(capsys, result["code"], "nothing was rolled back")


def test_L7_the_gate_never_opens_a_fifo_or_device_for_reading(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe")
    (root / "link").symlink_to("/dev/zero")
    g = Gate([str(root)])
    for name in ("pipe", "link"):
        with pytest.raises(gate.PathRefused, match="not a file this tool wrote"):
            g.read_bytes(str(root / name))


def test_L8_a_journal_folder_replaced_by_a_link_is_one_line(committed_ingest, inputs, tmp_path, capsys):
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(journal, elsewhere)
    journal.symlink_to(elsewhere, target_is_directory=True)
    mixed = results(out)
    capsys.readouterr()
    one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out)]),
                   "nothing was rolled back")
    assert results(out) == mixed


def test_a_journal_copied_from_another_killed_run_is_refused(committed_ingest, inputs, tmp_path, capsys):
    """Bound to the manifest's run: a journal moved under another run's staging folder is not its."""
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    manifest = json.loads((out / run_manifest.MANIFEST).read_text())
    (out / manifest["staging"]).rename(out / run_manifest.STAGING / "ingest-other")
    (out / run_manifest.MANIFEST).write_text(json.dumps({**manifest, "run_id": "ingest-other",
                                                    "staging": f"{run_manifest.STAGING}/ingest-other"}))
    mixed = results(out)
    capsys.readouterr()
    one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(out)]),
                   "belongs to run")
    assert results(out) == mixed


# =========================================================================== L9, L10, L13, L14: the table root


@pytest.fixture(scope="module")
def two_table_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust_table")
    raw = base / "raw"
    make_split_tree(raw, per_class=1, splits=("test",))
    for run_id in ("runA", "runB"):
        predict.run(["--input", str(raw / "test"), "--output", str(base / f"out_{run_id}"), "--table",
                     str(base / "table"), "--run-id", run_id, "--quiet"])
    return base, raw / "test"


def table_copy(two_table_runs, tmp_path) -> pathlib.Path:
    root = tmp_path / "table"
    shutil.copytree(two_table_runs[0] / "table", root)
    return root


def test_L9_a_runs_row_copied_from_another_run_is_refused_and_that_runs_partition_kept(
        two_table_runs, tmp_path, capsys):
    base, raw = two_table_runs
    root = table_copy(two_table_runs, tmp_path)
    shutil.copyfile(root / claim.RUNS / "runB.parquet", root / claim.RUNS / "runA.parquet")
    with pytest.raises(UsageError, match="not one row of run runA"):
        partitions.read_run(str(root), "runA")
    before = snapshot(root)
    capsys.readouterr()
    one_line_error(capsys, cli.main(["predict", "--input", str(raw), "--output", str(tmp_path / "out"), "--table",
                                     str(root), "--run-id", "runA"]), "runA")
    assert snapshot(root) == before and list(root.glob("model_version=*/run_date=*/run_id=runB/*.parquet"))


@pytest.mark.parametrize("planted", ["_bigquery/mine.sql", "partition", "_runs/mine.parquet"])
def test_L10_a_users_file_under_the_tables_names_is_refused_in_one_line(two_table_runs, tmp_path, capsys, planted):
    base, raw = two_table_runs
    root = table_copy(two_table_runs, tmp_path)
    if planted == "partition":
        planted = str(next(root.glob("model_version=*/run_date=*/run_id=runA")).relative_to(root)) + "/mine.txt"
    (root / planted).write_text("-- the user's own file\n")
    before = snapshot(root)
    capsys.readouterr()
    one_line_error(capsys, cli.main(["predict", "--input", str(raw), "--output", str(tmp_path / "out"), "--table",
                                     str(root), "--run-id", "runA"]), "did not write", planted.rsplit("/", 1)[-1])
    assert snapshot(root) == before


def test_L10_a_fresh_table_root_with_a_users_bigquery_file_is_refused(two_table_runs, tmp_path, capsys):
    base, raw = two_table_runs
    root = tmp_path / "fresh"
    (root / claim.BIGQUERY).mkdir(parents=True)
    (root / claim.BIGQUERY / "predictions.sql").write_text("-- my own DDL\n")
    capsys.readouterr()
    one_line_error(capsys, cli.main(["predict", "--input", str(raw), "--output", str(tmp_path / "out"), "--table",
                                     str(root)]), "predictions.sql")
    assert (root / claim.BIGQUERY / "predictions.sql").read_text() == "-- my own DDL\n"


def test_the_table_manifest_lists_exactly_what_the_table_holds(two_table_runs):
    root = two_table_runs[0] / "table"
    listed = json.loads((root / claim.MANIFEST).read_text())["files"]
    present = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                     and p.name not in (claim.MANIFEST, claim.LOCK))
    assert listed == present


def test_L13_a_dead_runs_table_staging_is_removed_by_the_next_table_run(two_table_runs, tmp_path, capsys):
    base, raw = two_table_runs
    root = table_copy(two_table_runs, tmp_path)
    dead = root / claim.STAGING / "predict-killed"
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"half a file")
    assert claim.remove_killed_staging(str(root), "predict-killed") is True
    assert not (root / claim.STAGING).exists()
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"half a file")
    assert cli.main(["predict", "--input", str(raw), "--output", str(tmp_path / "out"), "--table", str(root),
                     "--quiet"]) == 0
    assert not (root / claim.STAGING).exists()


def test_L13_a_killed_commits_retired_files_in_the_table_are_kept_for_its_roll_back(two_table_runs, tmp_path):
    root = table_copy(two_table_runs, tmp_path)
    retired = root / claim.STAGING / "predict-killed" / ".retired" / "00001" / "_runs"
    retired.mkdir(parents=True)
    (retired / "x.parquet").write_bytes(b"the only copy")
    claim.remove_killed_staging(str(root), "predict-killed")
    assert (retired / "x.parquet").read_bytes() == b"the only copy"


def test_L14_a_table_inside_the_input_or_the_input_inside_the_table_is_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "alias").symlink_to(raw, target_is_directory=True)
    for table_root, input_path in ((raw / "table", raw), (tmp_path / "alias" / "t", raw), (tmp_path, raw),
                                   (raw, raw)):
        with pytest.raises(UsageError, match="overlap"):
            claim.check_apart(str(table_root), str(input_path))
    claim.check_apart(str(tmp_path / "table"), str(raw))


# =========================================================================== L12: the OS's refusals


def test_L12_a_file_size_limit_during_a_write_is_one_line(tmp_path):
    """ulimit -f: the write fails with EFBIG (Python ignores SIGXFSZ), which the gate says in one line."""
    code = (
        "import resource, sys\n"
        "from model.gate import Gate\n"
        "from model.errors import UsageError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        f"g = Gate([{str(tmp_path)!r}])\n"
        "try:\n"
        f"    g.write_bytes({str(tmp_path / 'big.bin')!r}, b'x' * 5000)\n"
        "except UsageError as exc:\n"
        "    print(exc); sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "File too large" in done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / "big.bin").exists() and not list(tmp_path.glob(".big.bin.*"))


def test_L12_an_output_so_deep_that_staging_paths_pass_path_max_is_one_line(capsys, tmp_path, inputs):
    deep = tmp_path
    while len(str(deep)) < 4096 - 200:
        deep = deep / ("d" * 200)
    capsys.readouterr()
    one_line_error(capsys, cli.main(["ingest", "--input", str(inputs[0]), "--output", str(deep)]), "--output",
                   "limit")
    assert not (tmp_path / ("d" * 200)).exists()


def test_L12_the_refusals_the_gate_says_in_one_line_include_efbig_and_enametoolong():
    import errno

    assert {errno.EFBIG, errno.ENAMETOOLONG, errno.ENOSPC, errno.EACCES} <= gate.REFUSED_ERRNOS


# =========================================================================== L15: compressed arrays


def test_L15_a_compressed_array_file_is_refused_by_size_while_streaming(tmp_path, monkeypatch):
    from model import train_portable

    bomb = tmp_path / "x.npz.xz"
    with lzma.open(bomb, "wb", preset=9) as f:
        f.write(b"PK\x03\x04" + b"\0" * (64 << 20))  # 64 MiB of zeros: a few KB packed
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(train_portable, "ARRAYS_MAX_BYTES", 8 << 20)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    started = time.time()
    with pytest.raises(UsageError, match="unpacks to more than") as refused:
        train_portable.load_arrays(str(bomb))
    assert "pickled" not in str(refused.value) and time.time() - started < 10
    assert not os.listdir(tmp_path / "tmp")


def test_L15_an_xz_file_that_is_not_an_npz_inside_is_refused_at_its_first_bytes(tmp_path):
    from model import train_portable

    wrong = tmp_path / "x.npz.xz"
    with lzma.open(wrong, "wb") as f:
        f.write(b"\x80\x04 a pickle, not a zip archive" * 100)
    with pytest.raises(UsageError, match="unpack to an .npz"):
        train_portable.load_arrays(str(wrong))


def test_a_training_manifest_that_is_a_fifo_or_link_is_refused_unopened(tmp_path):
    from model import ownership

    root = tmp_path / "model"
    root.mkdir()
    os.mkfifo(root / ownership.MANIFEST)
    with pytest.raises(UsageError, match="not a manifest training wrote"):
        ownership.read_manifest(str(root))
    (root / ownership.MANIFEST).unlink()
    (root / ownership.MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text('{"files": []}')
    with pytest.raises(UsageError, match="not a manifest training wrote"):
        ownership.read_manifest(str(root))


def test_a_step_entry_cut_short_by_a_kill_is_a_step_never_taken(committed_ingest, inputs, tmp_path):
    """Found by the soak: killed inside the write of a journal entry, the gate's temporary file stays in
    the journal; the roll-back reads it as what it is (a step never taken), not as a foreign file."""
    out = killed_in_commit(committed_ingest, inputs, tmp_path)
    journal = next((out / run_manifest.STAGING).glob(f"*/{run_manifest.JOURNAL}"))
    n = len(list(journal.glob("0*.json")))
    (journal / f".{n:06d}.json.k2x9_q.tmp").write_text('{"half": ')
    assert killed_runs.recover(str(out)) is True
    assert results(out) == results(committed_ingest)


def test_a_recorded_folder_name_with_a_trailing_slash_joins_with_one_slash():
    """A staging name read back from a manifest or a journal may end in '/': the paths built from it,
    and the messages that show them, have one slash between parts (local and gs:// alike)."""
    from beam_pipelines.base.files import join

    assert join("out/", "_staging/run-1/", ".retired") == "out/_staging/run-1/.retired"
    assert join("gs://bucket/out", "/predictions/", "part.parquet") == "gs://bucket/out/predictions/part.parquet"
    assert join("out", "") == "out/"  # a folder prefix, as before


def test_a_storage_refusal_is_one_line_with_both_paths():
    """The file system's refusal behind a failed run, as the one error line shows it: the paths as they are
    (both of a move), and a path with a control character escaped rather than split over two lines."""
    import errno

    refusal = cli._storage_refusal
    assert refusal(PermissionError(errno.EACCES, "Permission denied", "/data/out/x")) == \
        "Permission denied: /data/out/x"
    assert refusal(OSError(errno.ENOTDIR, "Not a directory", "/a/src", None, "/b/dst")) == \
        "Not a directory: /a/src -> /b/dst"
    line = refusal(PermissionError(errno.EACCES, "Permission denied", "/data/run\nx"))
    assert "\n" not in line and "/data/run" in line
    wrapped = RuntimeError("a runner's wrapper")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/ro/f")
    assert refusal(wrapped) == "Read-only file system: /ro/f"
    assert refusal(RuntimeError("no file system behind it")) is None
