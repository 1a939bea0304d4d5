"""The gate: every remove, move and link a run makes, and every write outside its staging folder
(manifests, commits, the table's runs row, report.html), checked against the run's own roots.

A run owns a few roots: its --output, its --table root, its --model-dir, and the temporary folders it
created itself (Gate.make_temp_dir). Every path an operation touches is resolved first (local: the
real path of its folder, links followed, plus its own name, so a link is removed, never its target;
gs://: the object name, refused if it holds a `.` or `..` segment) and refused unless it lies strictly
inside one of those roots, whatever a manifest, a metadata file or a link says. A refusal is a
PathRefused (a UsageError: one line, exit 2).

Names that become paths are validated where they enter (check_name: run ids, model versions; and
check_relative: the entries of a manifest), so a refusal here is the second line of defence.

The pipelines' workers write their results into the run's staging folder (_staging/<run id>/, made
by the run itself, under its --output or --table root) through Beam's sinks; those files reach their
place only through a Transaction of this module.

Beam-free and TensorFlow-free on import: beam_pipelines/ and model/ both use it. Remote (gs://)
operations go through the store its owner passes: Beam's FileSystems (beam_pipelines.base.storage, the
pipelines) or tf.io.gfile (TensorFlowStore, training and export: the training image has no Beam). Local operations are
os/shutil calls, literal (no globbing), here and nowhere else: tests/test_gate.py fails when code
outside this module calls shutil.rmtree, os.remove/unlink/rename/replace/rmdir, FileSystems.delete/
rename or tf.io.gfile.remove/rmtree/rename.

The API (every path is local or gs://):

    gate = Gate([output, table_root], store=BeamStore())  (beam_pipelines.base.storage.pipeline_gate)
    gate.inside(path)                  the checked path, or PathRefused
    gate.remove(path)                  one file or link (absent: nothing)
    gate.remove_tree(path)             a folder and everything under it (a link: only the link)
    gate.remove_empty_dirs(path, stop) empty folders from path up to (not including) stop
    gate.move(src, dst)                a file (replacing a file at dst) or a folder (dst must not exist)
    gate.write_bytes(path, data)       a new file, whole or not at all (local: temp file + rename)
    gate.make_temp_dir(prefix)         a fresh folder (tempfile.mkdtemp), made a root of this gate
    gate.link(target, folder)          a fresh link folder/<name> to the absolute target
    with gate.transaction({root: trash_folder}) as tx:
        tx.move(src, dst); tx.retire(path); tx.write_bytes(path, data)
                                       all or nothing: an exception undoes every step, in reverse;
                                       on success the retired files (in the trash folders) are removed
    gate.transaction(trash, journal=folder, header={...})
                                       the same, each step written to `folder` before it is taken, so
                                       that a process killed inside it is rolled back by the next run:
    read_journal(gate, folder) -> (header, steps); roll_back(gate, steps)

    RootLock(root, run_id, flag, name)  one writer per root (see its docstring)
    RootClaim(root, run_id, store)      a root the tool owns: its lock, its manifest read as untrusted
                                        input, the files under its names that are not the tool's refused,
                                        a dead run's staging removed (model/gate/claim.py; subclassed by
                                        OutputClaim, TableClaim and TrainingClaim)

The invariants a harness can check after any run, failed or not: nothing outside the roots changed;
every manifest (outputs' _run.json, training's _train.json) lists exactly the files under the names
its owner writes; no trash or staging folder is left after a run that ended (killed runs excepted:
the next run removes what their manifest names).
"""

from model.gate.locks import RootLock, new_id, release_remote_lock, writable_folder
from model.gate.names import (NAME_MAX, REFUSED_ERRNOS, PathRefused, canonical, check_name, check_relative, is_local,
                              name_problem, refusal, regular_file, relative_problem, resolve, within)
from model.gate.ops import Gate, NoRemoteStore, TensorFlowStore
from model.gate.transaction import Transaction, content_digest, identity
from model.gate.recovery import Journal, JournalRefused, MissingRoot, plan_roll_back, read_journal, roll_back
from model.gate.claim import MANIFEST_MAX_BYTES, RootClaim

__all__ = ["MANIFEST_MAX_BYTES", "NAME_MAX", "REFUSED_ERRNOS", "Gate", "Journal", "JournalRefused", "MissingRoot",
           "NoRemoteStore", "TensorFlowStore", "PathRefused", "RootClaim", "RootLock", "Transaction", "canonical",
           "check_name", "check_relative",
           "content_digest", "identity", "is_local", "name_problem", "new_id", "plan_roll_back", "read_journal",
           "refusal", "regular_file", "relative_problem", "release_remote_lock", "resolve", "roll_back", "within",
           "writable_folder"]
