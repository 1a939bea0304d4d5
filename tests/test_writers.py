"""Every writer goes through the gate (issue 26, item 5).

An AST scan of every module in beam_pipelines/, model/ and schemas/ (model/gate/ itself excepted) finds
every call that can write, delete, move or create a file: open() in a writing mode (or a mode only known
at run time), os.open with a writing flag, the os and shutil calls that change the file system, pathlib's
write_*/mkdir/unlink/rename..., numpy's save*, tf.io.gfile (GFile in a writing mode, copy, makedirs...),
TFRecordWriter, Beam's FileSystems and sinks, pyarrow's writers, Keras' and TensorFlow's save/export,
matplotlib's savefig, tempfile's files and folders, Cloud Storage uploads and deletes. Names are resolved
through each module's own imports (`import numpy as np`, `from os import path`, function-level imports
included), so `np.savez` is numpy's and `dataclasses.replace` or `str.replace` are not a file's.

Each site found must be a call on a gate object (model.gate's Gate, a transaction, pipeline_gate(...):
they check the path against the run's roots) or be listed in ALLOWED, keyed (module, function), with
why it is safe. The test fails on a site not listed (a new writer: route it through the gate, or list
it with its reason) and on a listed key where no site is found any more (a stale entry).
"""

from __future__ import annotations

import ast
import pathlib
import textwrap
from collections import Counter

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("beam_pipelines", "model", "schemas")
GATE_PACKAGE = REPO / "model" / "gate"

# =========================================================================== what writes

# Functions (fully qualified, after resolving the module's imports) that change the file system.
WRITING_FUNCTIONS = {
    *(f"os.{name}" for name in ("remove", "unlink", "rename", "renames", "replace", "rmdir", "removedirs", "mkdir",
                                "makedirs", "link", "symlink", "truncate", "mkfifo", "mknod")),
    *(f"numpy.{name}" for name in ("save", "savez", "savez_compressed", "savetxt")),
    *(f"tempfile.{name}" for name in ("mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryFile",
                                      "SpooledTemporaryFile", "TemporaryDirectory")),
    *(f"tensorflow.io.gfile.{name}" for name in ("copy", "makedirs", "mkdir", "remove", "rename", "rmtree")),
    "tensorflow.io.write_file", "tensorflow.io.TFRecordWriter", "tensorflow.summary.create_file_writer",
    "tensorflow.train.CheckpointManager", "tensorflow.saved_model.save", "tensorflow.keras.models.save_model",
    "keras.models.save_model", "keras.saving.save_model",
    *(f"apache_beam.io.filesystems.FileSystems.{name}" for name in ("create", "delete", "rename", "copy", "mkdirs")),
    *(f"pyarrow.parquet.{name}" for name in ("write_table", "write_to_dataset", "ParquetWriter")),
    "pyarrow.csv.write_csv", "pyarrow.feather.write_feather", "pyarrow.OSFile",
    "cv2.imwrite", "matplotlib.pyplot.savefig",
}
# shutil: everything but these reads.
SHUTIL_READS = {"shutil.which", "shutil.disk_usage", "shutil.get_terminal_size", "shutil.copyfileobj"}
# Opening with a mode: (qualified name, index of the mode argument, default mode).
MODE_OPENERS = {"open": (1, "r"), "io.open": (1, "r"), "os.fdopen": (1, "r"), "gzip.open": (1, "rb"),
                "lzma.open": (1, "rb"), "bz2.open": (1, "rb"), "zipfile.ZipFile": (1, "r"), "tarfile.open": (1, "r"),
                "tensorflow.io.gfile.GFile": (1, "r"), "tensorflow.gfile.GFile": (1, "r"),
                "apache_beam.io.filesystems.FileSystems.open": (None, "r")}
OS_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE"}
# Beam's sinks: their names begin with WriteTo (WriteToText, WriteToParquet, WriteToTFRecord, WriteToFiles...).
BEAM_SINK_PREFIX = "WriteTo"
# Methods that write whatever their receiver is (a Path, a Keras model, a checkpoint, a figure, a blob),
# unless the receiver is a gate object.
WRITING_METHODS = {"write_bytes", "write_text", "mkdir", "touch", "unlink", "rmdir", "symlink_to", "hardlink_to",
                   "tofile", "save", "save_weights", "savefig", "to_parquet", "to_csv", "upload_from_string",
                   "upload_from_filename", "upload_from_file", "delete", "delete_blob", "delete_blobs", "copy_blob",
                   "rename_blob", "rewrite", "compose", "makedirs", "copytree", "write_out", "create", "mkdirs"}
# replace is a Path's (one target) or a str's (two or more arguments): only the one-argument form is a
# file's. rename is a Path's (one target) or FileSystems' (sources, targets).
ARGUMENT_COUNT_METHODS = {"replace": (1,), "rename": (1, 2)}
# Keras' Model.export(path) (the receiver is a model, not our module model.export).
KERAS_EXPORT = "export"
# Writers into a file object: which argument is where they write. One that is an in-memory buffer
# (a name bound to io.BytesIO() in the same function) writes no file: its bytes go to disk through
# whatever the caller does with them (the gate's write_bytes).
TARGET_ARGUMENT = {"numpy.save": 0, "numpy.savez": 0, "numpy.savez_compressed": 0, "numpy.savetxt": 0,
                   "pyarrow.parquet.write_table": 1, "pyarrow.csv.write_csv": 1, "pyarrow.feather.write_feather": 1,
                   ".savefig()": 0, ".save()": 0, ".to_parquet()": 0, ".to_csv()": 0}
MEMORY_BUFFERS = {"io.BytesIO", "io.StringIO"}
# The gate's API: calls on these are checked by the gate itself.
GATE_FACTORIES = {"model.gate.Gate", "model.gate.ops.Gate", "beam_pipelines.base.storage.pipeline_gate",
                  "model.ownership.model_gate"}
# Our own helpers that write wherever their caller says: each call of one is a writing site too.
WRITING_HELPERS = {"beam_pipelines.base.files.write_bytes", "model.files.local_target"}
GATE_ANNOTATIONS = {"Gate", "Transaction", "gate.Gate", "gate.Transaction"}

# =========================================================================== the allowlist

# (module, function) -> why the writes there are safe. A function is "Class.method" or "outer.inner";
# "<module>" for module level.
_STAGING = ("into the run's own _staging/<run id>/ (made by its claim, under the output's lock); only the gate's "
            "journaled commit moves it into place")
_TRAINING = ("under --model-dir, held by _train.lock (ownership.TrainingClaim), a name of ownership.NAMES that "
             "_train.json lists")
ALLOWED: dict[tuple[str, str], str] = {
    # ------------------------------------------------------------------ the pipelines' workers: staging only
    ("beam_pipelines.base.files", "write_bytes"):
        "the workers' one file write (FileSystems.create); every caller below writes " + _STAGING,
    ("beam_pipelines.compare", "write"): "compare's four files, written " + _STAGING + " (plan.write_root)",
    ("beam_pipelines.predict.evaluation", "WriteEvaluation._write_metrics"): "evaluation tables and plots, written " + _STAGING,
    ("beam_pipelines.predict.evaluation", "WriteEvaluation.process"): "evaluation plots and slices, written " + _STAGING,
    ("beam_pipelines.predict.evaluation", "_write_json"): "metrics.json and friends, written " + _STAGING,
    ("beam_pipelines.ingest.pipeline", "Ingest.expand"): "Beam's WriteToParquet of rejected/, its prefix " + _STAGING,
    ("beam_pipelines.ingest.shards", "DedupeAndWriteShard.process"): "one TFRecord shard, written " + _STAGING,
    ("beam_pipelines.ingest.shards", "WriteEmptyShards.process"): "an empty TFRecord shard, written " + _STAGING,
    ("beam_pipelines.ingest.shuffle", "Spilled.write"): "spill files of the shuffle, written " + _STAGING,
    ("beam_pipelines.ingest.stats", "WriteStats.process"): "stats.json and its plot, written " + _STAGING,
    ("beam_pipelines.predict.launcher", "_run_pipeline"): "bigquery/predictions.schema.json under plan.write_root, " + _STAGING,
    ("beam_pipelines.predict.pipeline", "Predict.expand"):
        "Beam's Parquet sinks for predictions/ and rejected/, their prefixes " + _STAGING,
    ("beam_pipelines.predict.pipeline", "WriteSummary.process"): "summary.json, written " + _STAGING,
    ("beam_pipelines.table.partitions", "_WriteFile.process"):
        "one table file into the table's own _staging/<run id>/ (TableClaim holds _table.lock); the journaled "
        "commit moves it",
    # ------------------------------------------------------------------ the gate's store for gs://
    ("beam_pipelines.base.storage", "BeamStore.delete"):
        "the gate's gs:// store: called only by model.gate's Gate after its root check",
    ("beam_pipelines.base.storage", "BeamStore.rename"):
        "the gate's gs:// store: called only by model.gate's Gate after its root check",
    ("beam_pipelines.base.storage", "BeamStore.write"):
        "the gate's gs:// store: called only by model.gate's Gate after its root check",
    # ------------------------------------------------------------------ the demo (its own --output)
    ("beam_pipelines.demo", "_check_output"):
        "creates the demo's --output folder (os.makedirs, exist_ok): nothing is replaced or removed",
    ("beam_pipelines.demo", "_train"):
        "an anonymous temporary file in TMPDIR for the training subprocess's output, gone when closed",
    # ------------------------------------------------------------------ training and export: --model-dir
    ("model.train_io", "write_history"): "history.csv " + _TRAINING,
    ("model.train_io", "make_dirs"): "folders (checkpoints/, logs/...) " + _TRAINING,
    ("model.train_io", "save_checkpoint"): "TensorFlow's CheckpointManager writes checkpoints/ " + _TRAINING,
    ("model.train_io", "save_weights"): "best.weights.h5, Keras writing into a temp folder then copied, " + _TRAINING,
    ("model.train_io", "summary_writer"): "TensorBoard's event files in logs/ " + _TRAINING,
    ("model.train_io", "import_run"): "best.weights.h5 and history.csv copied from --import-run " + _TRAINING,
    ("model.train_loop", "build_state"): "the CheckpointManager over checkpoints/ " + _TRAINING,
    ("model.plots", "training_curves"): "plots/training_curves.png " + _TRAINING,
    ("model.export", "export"):
        "the export's own .export-staging-<uuid>/ folder in --model-dir under _train.lock, committed by the "
        "gate's moves",
    ("model.export", "main"):
        "a fresh export/.saved_model-<uuid>/ of its own under --model-dir, moved into place by the gate",
    ("model.export", "_save_keras"):
        "model.keras, Keras writing into a temp folder, copied into the export's own staging folder",
    ("model.export", "_copy_tree"):
        "gs:// only: copies the export's own staging folder to export/ after the gate removed the old one",
    ("model.quantize", "convert_int8"):
        "a private TemporaryDirectory for the converter's SavedModel, removed when the block ends",
    # ------------------------------------------------------------------ temporary files of our own
    ("model.files", "local_copy"):
        "a private TemporaryDirectory holding a copy of a file to read, removed when the block ends",
    ("model.files", "local_target"):
        "copies a file Keras wrote in a private TemporaryDirectory to its caller's path (callers listed here)",
    ("model.engines", "_without_delegate_notice"):
        "an anonymous temporary file catching LiteRT's stderr notice, gone when closed",
    ("model.quiet", "import_tensorflow_quietly"):
        "opens os.devnull for writing to silence TensorFlow's start-up: no file is created",
    ("model.train_portable", "load_arrays"):
        "a NamedTemporaryFile in TMPDIR for an unpacked .xz, size-capped and removed when closed",
    ("model.train_portable_loop", "OutFolder.save_weights"):
        "Keras writes into this run's gate-made temp folder; the bytes reach --out by gate.write_bytes",
    ("model.train_portable_loop", "select_on_val.Track.on_epoch_end"):
        "calls OutFolder.save_weights (ours, through the gate under _portable.lock), not Keras'",
}


# =========================================================================== the scan


class _Imports(ast.NodeVisitor):
    """Local name -> qualified name, from every import statement of a module (function-level too)."""

    def __init__(self, module: str):
        self.module = module
        self.names: dict[str, str] = {}

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.names[alias.asname] = alias.name
            else:
                self.names[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the module's own package
            package = self.module.split(".")[:-node.level]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            self.names[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name


def _dotted(node: ast.AST) -> list[str] | None:
    """a.b.c as ["a", "b", "c"]; None for anything else (a call, a subscript...)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _canonical(name: str) -> str:
    """A qualified name in one spelling: tf.* -> tensorflow.*, Beam's FileSystems wherever imported from."""
    for short, full in (("tensorflow.compat.v2.", "tensorflow."), ("tensorflow.compat.v1.", "tensorflow."),
                        ("apache_beam.io.FileSystems.", "apache_beam.io.filesystems.FileSystems."),
                        ("apache_beam.io.filesystem.FileSystems.", "apache_beam.io.filesystems.FileSystems."),
                        ("tensorflow.keras.", "keras."), ("pathlib.Path.", "pathlib.Path.")):
        if name.startswith(short):
            name = full + name[len(short):]
    return name


class _Scanner(ast.NodeVisitor):
    """Finds the writing calls of one module: (function, line, what) each."""

    def __init__(self, module: str, imports: dict[str, str]):
        self.module, self.imports = module, imports
        self.scope: list[str] = []
        self.gate_names: list[set[str]] = [set()]  # per function: local names bound to a gate object
        self.buffers: list[set[str]] = [set()]  # per function: local names bound to an in-memory buffer
        self.gate_attrs: set[str] = set()  # self.<attr> bound to a gate object anywhere in the module
        self.sites: list[tuple[str, int, str]] = []
        self.defined: set[str] = set()  # the module's top-level functions

    # ------------------------------------------------------------------ scopes

    def _function(self, node) -> None:
        self.scope.append(node.name)
        names = set()
        for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
            if arg.annotation is not None and ast.unparse(arg.annotation).strip("'\"") in GATE_ANNOTATIONS:
                names.add(arg.arg)
        self.gate_names.append(names)
        self.buffers.append(set())
        self.generic_visit(node)
        self.buffers.pop()
        self.gate_names.pop()
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def where(self) -> str:
        return ".".join(self.scope) or "<module>"

    # ------------------------------------------------------------------ gate objects

    def qualified(self, node: ast.AST) -> str | None:
        parts = _dotted(node)
        if parts is None:
            return None
        head = parts[0]
        if head in self.imports:
            return _canonical(".".join([self.imports[head], *parts[1:]]))
        if head == "open" and len(parts) == 1:
            return head
        if head in self.defined:  # a function of this module
            return ".".join([self.module, *parts])
        return None

    def is_gate(self, node: ast.AST) -> bool:
        """A gate object: a Gate(...)/pipeline_gate(...) call, x.gate() or x.transaction(...), a local
        name bound to one, or self.<attr> bound to one."""
        if isinstance(node, ast.Call):
            name = self.qualified(node.func)
            if name in GATE_FACTORIES:
                return True
            return isinstance(node.func, ast.Attribute) and node.func.attr in ("gate", "transaction")
        if isinstance(node, ast.Name):
            return node.id in self.gate_names[-1]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr in self.gate_attrs
        return False

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Call) and self.qualified(node.value.func) in MEMORY_BUFFERS:
            self.buffers[-1].update(t.id for t in node.targets if isinstance(t, ast.Name))
        if self.is_gate(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.gate_names[-1].add(target.id)
                elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == "self":
                    self.gate_attrs.add(target.attr)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if isinstance(item.optional_vars, ast.Name) and isinstance(item.context_expr, ast.Call) \
                    and self.qualified(item.context_expr.func) in MEMORY_BUFFERS:
                self.buffers[-1].add(item.optional_vars.id)
            if isinstance(item.optional_vars, ast.Name) and self.is_gate(item.context_expr):
                self.gate_names[-1].add(item.optional_vars.id)
        self.generic_visit(node)

    # ------------------------------------------------------------------ calls

    def visit_Call(self, node: ast.Call) -> None:
        what = self.writes(node)
        if what and self._into_memory(what, node):
            what = None
        if what:
            self.sites.append((self.where(), node.lineno, what))
        self.generic_visit(node)

    def writes(self, node: ast.Call) -> str | None:
        """What the call writes ("numpy.savez", "open mode 'w'", ".save"), or None."""
        name = self.qualified(node.func)
        if name is not None:
            return self._function_writes(name, node)
        if isinstance(node.func, ast.Attribute):
            receiver, method = node.func.value, node.func.attr
            if self.is_gate(receiver):
                return None
            if self._is_module(receiver):  # a function of a module we did not resolve: ours, never a file's
                return None
            if method in WRITING_METHODS:
                return f".{method}()"
            if len(node.args) in ARGUMENT_COUNT_METHODS.get(method, ()) and not node.keywords:
                return f".{method}()"
            if method == KERAS_EXPORT and node.args:
                return ".export()"
        return None

    def _into_memory(self, what: str, node: ast.Call) -> bool:
        index = TARGET_ARGUMENT.get(what)
        if index is None or len(node.args) <= index:
            return False
        target = node.args[index]
        return isinstance(target, ast.Name) and target.id in self.buffers[-1]

    def _is_module(self, node: ast.AST) -> bool:
        parts = _dotted(node)
        return parts is not None and parts[0] in self.imports

    def _function_writes(self, name: str, node: ast.Call) -> str | None:
        if name in WRITING_FUNCTIONS or name in WRITING_HELPERS:
            return name
        if name.startswith("shutil.") and name not in SHUTIL_READS:
            return name
        if name.rsplit(".", 1)[-1].startswith(BEAM_SINK_PREFIX) and name.startswith("apache_beam."):
            return name
        if name in MODE_OPENERS:
            return self._mode_writes(name, node)
        if name == "os.open":
            flags = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "flags"),
                                                                None)
            used = {n.attr for n in ast.walk(flags) if isinstance(n, ast.Attribute)} if flags is not None else set()
            used |= {n.id for n in ast.walk(flags) if isinstance(n, ast.Name)} if flags is not None else set()
            if used & OS_WRITE_FLAGS or not used & {"O_RDONLY"}:
                return "os.open (writing flags)"
            return None
        parts = name.split(".")
        method = parts[-1]
        if len(parts) > 1 and parts[0] not in PACKAGES and method in WRITING_METHODS | {KERAS_EXPORT}:
            return name  # e.g. a module-level object's .save
        return None

    @staticmethod
    def _mode_writes(name: str, node: ast.Call) -> str | None:
        index, default = MODE_OPENERS[name]
        mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode is None and index is not None and len(node.args) > index:
            mode = node.args[index]
        if name == "apache_beam.io.filesystems.FileSystems.open":
            return None  # reads only
        if mode is None:
            return f"{name} mode {default!r}" if set(default) & set("wax+") else None
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return f"{name} mode {mode.value!r}" if set(mode.value) & set("wax+") else None
        return f"{name} with a mode known only at run time"


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan_source(source: str, module: str) -> list[tuple[str, int, str]]:
    """The writing sites of one module's source: (function, line, what)."""
    tree = ast.parse(source)
    imports = _Imports(module)
    imports.visit(tree)
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    scanner = _Scanner(module, imports.names)
    scanner.defined = defined
    # Two passes: self.<attr> = Gate(...) may come after (in __init__) a method that uses it.
    scanner.visit(tree)
    attrs = scanner.gate_attrs
    scanner = _Scanner(module, imports.names)
    scanner.defined, scanner.gate_attrs = defined, set(attrs)
    scanner.visit(tree)
    return scanner.sites


def product_modules() -> list[pathlib.Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py")
                  if GATE_PACKAGE not in path.parents)


def writing_sites() -> dict[tuple[str, str], list[str]]:
    """(module, function) -> ["line: what", ...] over every module of the product but the gate."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in product_modules():
        module = module_name(path)
        for function, line, what in scan_source(path.read_text(), module):
            found.setdefault((module, function), []).append(f"{path.relative_to(REPO)}:{line}: {what}")
    return found


# =========================================================================== the tests


def test_every_writing_call_goes_through_the_gate_or_is_listed_with_its_reason():
    found = writing_sites()
    unlisted = [f"{site}  (in {module}.{function})" for (module, function), sites in sorted(found.items())
                if (module, function) not in ALLOWED for site in sites]
    assert not unlisted, ("writing calls outside the gate (route them through model.gate, or list the "
                          "function in ALLOWED with why it is safe):\n" + "\n".join(unlisted))


def test_no_allowlist_entry_is_stale():
    found = writing_sites()
    stale = sorted(f"{module}.{function}" for module, function in ALLOWED if (module, function) not in found)
    assert not stale, "ALLOWED lists functions that no longer write (remove them):\n" + "\n".join(stale)


def test_every_allowlist_entry_says_why():
    assert all(len(reason.split()) >= 6 for reason in ALLOWED.values())
    assert len(set(ALLOWED)) == len(ALLOWED)


# The scan itself, on small sources: what it must find, and what it must not.
FOUND = {
    "open_w": ('def f(path):\n    with open(path, "w") as fh:\n        fh.write("x")\n', "open mode 'w'"),
    "open_plus": ('def f(path):\n    open(path, mode="r+b")\n', "open mode 'r+b'"),
    "open_dynamic": ('def f(path, mode):\n    open(path, mode)\n', "open with a mode known only at run time"),
    "numpy_alias": ('import numpy as np\ndef f(p, a):\n    np.savez(p, a=a)\n', "numpy.savez"),
    "numpy_from": ('from numpy import savez_compressed as keep\ndef f(p, a):\n    keep(p, a=a)\n',
                   "numpy.savez_compressed"),
    "os_replace": ('import os\ndef f(a, b):\n    os.replace(a, b)\n', "os.replace"),
    "os_open": ('import os\ndef f(p):\n    os.open(p, os.O_WRONLY | os.O_CREAT)\n', "os.open (writing flags)"),
    "shutil": ('import shutil\ndef f(a, b):\n    shutil.copytree(a, b)\n', "shutil.copytree"),
    "path_write": ('import pathlib\ndef f(p):\n    pathlib.Path(p).write_text("x")\n', ".write_text()"),
    "path_rename": ('def f(p, q):\n    p.rename(q)\n', ".rename()"),
    "filesystems_indirect": ('def f(store, a, b):\n    store._fs().rename([a], [b])\n', ".rename()"),
    "gfile": ('import tensorflow as tf\ndef f(p):\n    tf.io.gfile.GFile(p, "wb")\n',
              "tensorflow.io.gfile.GFile mode 'wb'"),
    "gfile_function_import": ('def f(p):\n    import tensorflow as tf\n    tf.io.gfile.makedirs(p)\n',
                              "tensorflow.io.gfile.makedirs"),
    "beam_fs": ('from apache_beam.io.filesystems import FileSystems\ndef f(p):\n    FileSystems.delete([p])\n',
                "apache_beam.io.filesystems.FileSystems.delete"),
    "beam_sink": ('import apache_beam as beam\ndef f(pc, p):\n    pc | beam.io.WriteToText(p)\n',
                  "apache_beam.io.WriteToText"),
    "parquet": ('import pyarrow.parquet as pq\ndef f(t, p):\n    pq.write_table(t, p)\n',
                "pyarrow.parquet.write_table"),
    "keras_save": ('def f(model, p):\n    model.save_weights(p)\n', ".save_weights()"),
    "keras_export": ('def f(model, p):\n    model.export(p)\n', ".export()"),
    "tempdir": ('import tempfile\ndef f():\n    return tempfile.mkdtemp()\n', "tempfile.mkdtemp"),
    "not_a_gate": ('def f(store, p):\n    store.write_bytes(p, b"")\n', ".write_bytes()"),
    "numpy_into_a_path_beside_a_buffer": ('import io\nimport numpy as np\ndef f(p, a):\n    buf = io.BytesIO()\n'
                                          '    np.savez(p, a=a)\n', "numpy.savez"),
}
NOT_FOUND = {
    "open_read": 'def f(p):\n    open(p)\n    open(p, "rb")\n',
    "os_open_read": 'import os\ndef f(p):\n    os.open(p, os.O_RDONLY | os.O_NOFOLLOW)\n',
    "str_replace": 'def f(s):\n    return s.replace("a", "b")\n',
    "dataclass_replace": 'import dataclasses\ndef f(c):\n    return dataclasses.replace(c, x=1)\n',
    "dataclass_replace_from": 'from dataclasses import replace\ndef f(c):\n    return replace(c, x=1)\n',
    "dict_copy": 'def f(d):\n    return d.copy()\n',
    "list_remove": 'def f(xs):\n    xs.remove(1)\n',
    "our_module": 'from model import export\ndef f(p):\n    export.export(p)\n',
    "gate_local": 'from model import gate\ndef f(root, p):\n    g = gate.Gate([root])\n    g.write_bytes(p, b"")\n'
                  '    g.remove(p)\n    with g.transaction({root: p}) as tx:\n        tx.move(p, p)\n',
    "gate_attribute": 'from model import gate\nclass C:\n    def write(self, p):\n'
                      '        self.gate.write_bytes(p, b"")\n'
                      '    def __init__(self, root):\n        self.gate = gate.Gate([root])\n',
    "gate_parameter": 'from model.gate import Gate\ndef f(g: Gate, p):\n    g.makedirs(p)\n',
    "pipeline_gate": 'from beam_pipelines.base.storage import pipeline_gate\ndef f(r, p):\n'
                     '    pipeline_gate([r]).write_bytes(p, b"")\n',
    "numpy_into_memory": 'import io\nimport numpy as np\ndef f(a):\n    buf = io.BytesIO()\n    np.savez(buf, a=a)\n',
    "parquet_into_memory": 'import io\nimport pyarrow.parquet as pq\ndef f(t):\n    sink = io.BytesIO()\n'
                           '    pq.write_table(t, sink)\n',
    "gfile_read": 'import tensorflow as tf\ndef f(p):\n    tf.io.gfile.GFile(p)\n    tf.io.gfile.exists(p)\n',
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_the_scan_finds_a_plain_write(case):
    source, what = FOUND[case]
    sites = scan_source(textwrap.dedent(source), "model.example")
    assert [(function, what_) for function, _, what_ in sites] == [("f", what)]
    # ...and so the first test would fail on it: an unlisted site in a module of ours.
    assert ("model.example", "f") not in ALLOWED


@pytest.mark.parametrize("case", sorted(NOT_FOUND))
def test_the_scan_leaves_reads_strings_and_gate_calls_alone(case):
    assert scan_source(textwrap.dedent(NOT_FOUND[case]), "model.example") == []


def test_the_scan_covers_every_package_but_the_gate():
    modules = {module_name(path) for path in product_modules()}
    assert {"beam_pipelines.cli", "model.train_portable", "model.distill", "schemas.tables"} <= modules
    assert not any(m.startswith("model.gate") for m in modules)
    assert Counter(m.split(".")[0] for m in modules).keys() == set(PACKAGES)


# =========================================================================== the writers routed through the gate


def _arrays(n: int = 3):
    import numpy as np

    return {"train_pixels": np.zeros((n, 4, 4, 1), np.uint8), "train_labels": np.zeros(n, np.int8)}, {"image_size": 4}


def test_export_arrays_writes_its_file_whole_through_the_gate_and_replaces_only_its_own(tmp_path):
    import numpy as np

    from model import train_portable
    from model.errors import UsageError

    out = tmp_path / "arrays.npz"
    arrays, info = _arrays(3)
    train_portable.write_arrays(str(out), arrays, info)
    with np.load(out) as f:
        assert f["train_labels"].shape == (3,) and "info" in f.files
    train_portable.write_arrays(str(out), *_arrays(5))  # its own earlier file: replaced
    with np.load(out) as f:
        assert f["train_labels"].shape == (5,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]  # no temporary file, no lock left
    mine, victim = tmp_path / "mine.npz", tmp_path / "victim.txt"
    mine.write_bytes(b"a user's own file")
    victim.write_bytes(b"precious")
    link = tmp_path / "link.npz"
    link.symlink_to(victim)
    for target in (mine, link):
        with pytest.raises(UsageError, match="not an export-arrays file"):
            train_portable.write_arrays(str(target), *_arrays(2))
    assert mine.read_bytes() == b"a user's own file" and victim.read_bytes() == b"precious" and link.is_symlink()
