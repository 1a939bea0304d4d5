"""Parquet schemas of `emotion compare`: what it reads of a predictions file, and the three tables it
writes under OUT/compare/ (beam_pipelines/compare.py says what each holds).

Every field is nullable, as the files have always been written. The per-class table is not
schemas.tables.PER_CLASS_SCHEMA (one run's evaluation): it holds two runs' scores side by side.
"""

from __future__ import annotations

import pyarrow as pa

# The columns of a predictions file (schemas.tables.PREDICTIONS_SCHEMA, or a table partition with
# model_version taken from its path) that a comparison needs, in the types it reads them as.
# face_index is null in rows of one image each (and absent from files of tables version < 4): rows
# are matched by (uri, face_index), a null index standing for face 0 (the largest, which a run of a
# row per image crops).
COMPARE_INPUT_SCHEMA = pa.schema([
    ("uri", pa.string()), ("content_sha256", pa.string()), ("true_label", pa.string()),
    ("predicted_label", pa.string()), ("confidence", pa.float64()), ("model_version", pa.string()),
    ("face_index", pa.int64()),
])
COMPARE_OPTIONAL_COLUMNS = ("face_index",)

# compare/agreement.parquet: the confusion between the two models' labels.
AGREEMENT_SCHEMA = pa.schema([("label_a", pa.string()), ("label_b", pa.string()), ("count", pa.int64())])

# compare/per_class.parquet: each class's support, and recall and F1 of run a and run b.
COMPARE_PER_CLASS_SCHEMA = pa.schema([
    ("label", pa.string()), ("support", pa.int64()), ("recall_a", pa.float64()),
    ("recall_b", pa.float64()), ("f1_a", pa.float64()), ("f1_b", pa.float64()),
])

# compare/disagreements.parquet: every image the two runs label differently.
DISAGREEMENTS_SCHEMA = pa.schema([
    ("uri", pa.string()), ("face_index", pa.int64()), ("content_sha256", pa.string()), ("true_label", pa.string()),
    ("label_a", pa.string()), ("confidence_a", pa.float64()),
    ("label_b", pa.string()), ("confidence_b", pa.float64()),
    ("correct", pa.string()),  # "a", "b", "neither", or null without a label
])
