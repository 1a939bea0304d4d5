"""Parquet schemas of every table the pipelines write, and their BigQuery JSON schemas.

Types are chosen so that DuckDB, pandas and BigQuery read them without casting:
strings, int64, float64, bool and UTC microsecond timestamps only.
"""

from __future__ import annotations

import json

import pyarrow as pa

from schemas.labels import LABELS

TABLES_VERSION = 4  # 2: predictions carry run_id; the partitioned table and the runs table
#                    3: table rows carry file_sha256, tta, preprocessing; runs carry incremental, skipped_seen
#                    4: predictions carry the face (index, box, detector, score) and abstained

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # ingest or predict
    ]
)

FACE_FIELDS = (
    pa.field("face_index", pa.int64()),
    pa.field("face_x", pa.int64()),
    pa.field("face_y", pa.int64()),
    pa.field("face_width", pa.int64()),
    pa.field("face_height", pa.int64()),
    pa.field("face_detector", pa.string()),
    pa.field("face_score", pa.float64()),
)

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string(), nullable=False),
        pa.field("true_label", pa.string()),  # null when the input carries no label
        pa.field("predicted_label", pa.string(), nullable=False),
        pa.field("predicted_index", pa.int64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("correct", pa.bool_()),  # null when true_label is null
        *[pa.field(f"prob_{name}", pa.float64(), nullable=False) for name in LABELS],
        pa.field("split", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),  # joins the runs table
        pa.field("run_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        # `--faces all`: one row per face. The face's index in its image (0: the largest, the face the
        # default run crops), its box in the decoded, EXIF-oriented image's pixels (rounded, clipped to
        # the image), the detector and its score (haar: merged detections; mtcnn: confidence in [0, 1]).
        # All null in a run of one row per image (the default).
        *FACE_FIELDS,
        # `--min-confidence` / `--min-margin`: true when the row's confidence (or the gap between its
        # two highest probabilities) is below the run's threshold; its probabilities are kept. Null in
        # a run without either option.
        pa.field("abstained", pa.bool_()),
    ]
)

# The appendable predictions table (`emotion predict --table ROOT`): Hive-style partitions
#   ROOT/model_version=<v>/run_date=<YYYY-MM-DD>/run_id=<id>/part-SSSSS.parquet
# The partition keys are folder names, not file columns (engines add them back: DuckDB with
# hive_partitioning, pyarrow with partitioning="hive", BigQuery with hive partitioning).
TABLE_PARTITION_KEYS = ("model_version", "run_date", "run_id")
# What decides whether an image was already predicted "the same way" (`emotion predict --incremental`
# skips a file whose bytes' hash the model version's partitions hold with the same tta and
# preprocessing). Nullable: rows written before tables version 3 lack them (read with DuckDB's
# union_by_name, they are null), and TFRecord input has no file bytes to hash.
TABLE_SEEN_FIELDS = [
    pa.field("file_sha256", pa.string()),  # hex SHA-256 of the image file's bytes, hashed before decoding
    pa.field("tta", pa.string()),  # none, flip or crops
    pa.field("preprocessing", pa.string()),  # the face crop: "face_crop=none", "face_crop=haar", ...
]
TABLE_SEEN_KEYS = tuple(f.name for f in TABLE_SEEN_FIELDS)
TABLE_SCHEMA = pa.schema([f for f in PREDICTIONS_SCHEMA if f.name not in TABLE_PARTITION_KEYS] + TABLE_SEEN_FIELDS)
# The table as an engine reads it: the file columns, then the partition keys (as pyarrow's
# ds.dataset(root, format="parquet", partitioning=ds.partitioning(TABLE_PARTITION_SCHEMA, flavor="hive"),
# schema=TABLE_READ_SCHEMA); files of older tables versions then read with nulls in the columns they lack).
TABLE_PARTITION_SCHEMA = pa.schema([pa.field(k, pa.string()) for k in TABLE_PARTITION_KEYS])
TABLE_READ_SCHEMA = pa.schema([*TABLE_SCHEMA, *TABLE_PARTITION_SCHEMA])
TABLE_SORT_KEYS = ("predicted_label", "confidence")  # within a file: prunes label and confidence filters
TABLE_ROWS_PER_FILE = 1_000_000
TABLE_ROW_GROUP_ROWS = 128 * 1024

# ROOT/_runs/<run_id>.parquet: one row per run (engines skip folders that start with "_").
RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("finished", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("input_uri", pa.string(), nullable=False),
        pa.field("data_fingerprint", pa.string(), nullable=False),  # of the predicted images' pixels
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("tta", pa.string(), nullable=False),
        pa.field("face_crop", pa.bool_(), nullable=False),
        pa.field("matched", pa.int64(), nullable=False),
        pa.field("predicted", pa.int64(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
        pa.field("skipped_non_data", pa.int64(), nullable=False),
        pa.field("incremental", pa.bool_()),  # null in rows written before tables version 3
        pa.field("skipped_seen", pa.int64()),  # --incremental: images the table already held, not predicted
        pa.field("labelled", pa.int64(), nullable=False),
        pa.field("accuracy", pa.float64()),  # null when no image carries a label
        pa.field("macro_f1", pa.float64()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),  # the run's own --output folder
    ]
)


def with_schema_version(schema: pa.Schema) -> pa.Schema:
    """The schema with the tables version in its metadata, as written into every Parquet file."""
    return schema.with_metadata({"emotion.tables_version": str(TABLES_VERSION)})

PER_CLASS_SCHEMA = pa.schema(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("precision", pa.float64(), nullable=False),
        pa.field("recall", pa.float64(), nullable=False),
        pa.field("f1", pa.float64(), nullable=False),
        pa.field("support", pa.int64(), nullable=False),
        pa.field("predicted", pa.int64(), nullable=False),
    ]
)

CONFUSION_SCHEMA = pa.schema(
    [
        pa.field("true_label", pa.string(), nullable=False),
        pa.field("predicted_label", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

# evaluation/coverage.parquet: the accuracy-coverage curve of the labelled rows: answering only the rows
# whose confidence is at least min_confidence (a row per threshold, 0.00 to 0.99 by 0.01).
COVERAGE_SCHEMA = pa.schema(
    [
        pa.field("min_confidence", pa.float64(), nullable=False),
        pa.field("answered", pa.int64(), nullable=False),  # labelled rows at or above the threshold
        pa.field("correct", pa.int64(), nullable=False),
        pa.field("coverage", pa.float64(), nullable=False),  # answered / labelled rows
        pa.field("accuracy", pa.float64()),  # correct / answered; null when none is answered
    ]
)

# evaluation/slices.parquet (`--slices FILE`): one row per value of each column of the user's file.
# Rows whose image the file does not list, or lists without a value, are the value "(none)", so that
# each column's rows and labelled counts add up to the run's. Intervals are 95%: Wilson's for the
# accuracy, a seeded bootstrap of the confusion matrix for the macro-F1.
SLICES_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),  # prediction rows (faces with --faces all)
        pa.field("answered", pa.int64(), nullable=False),  # rows not abstained
        pa.field("labelled", pa.int64(), nullable=False),
        pa.field("correct", pa.int64(), nullable=False),
        pa.field("accuracy", pa.float64()),  # null without a labelled row
        pa.field("accuracy_low", pa.float64()),
        pa.field("accuracy_high", pa.float64()),
        pa.field("macro_f1", pa.float64()),
        pa.field("macro_f1_low", pa.float64()),
        pa.field("macro_f1_high", pa.float64()),
    ]
)

_BQ_TYPES = {
    pa.string(): "STRING",
    pa.int64(): "INT64",
    pa.float64(): "FLOAT64",
    pa.bool_(): "BOOL",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}


def bigquery_schema(schema: pa.Schema) -> list[dict]:
    """The BigQuery JSON schema (as for `bq load --schema`) of an Arrow schema."""
    return [
        {
            "name": field.name,
            "type": _BQ_TYPES[field.type],
            "mode": "NULLABLE" if field.nullable else "REQUIRED",
        }
        for field in schema
    ]


def bigquery_schema_json(schema: pa.Schema) -> str:
    return json.dumps(bigquery_schema(schema), indent=2) + "\n"


def bigquery_external_table(root: str, table: str = "emotion.predictions") -> dict:
    """BigQuery definitions of the partitioned predictions table under a gs:// root: the external
    table definition JSON (as `bq mkdef` writes it, for `bq mk --external_table_definition`) and the
    equivalent DDL. The URI prefix stops at `model_version=` so the `_runs/` folder stays out."""
    root = root.rstrip("/")
    uri = f"{root}/model_version=*"
    keys = "/".join(f"{{{k}:{'DATE' if k == 'run_date' else 'STRING'}}}" for k in TABLE_PARTITION_KEYS)
    definition = {
        "sourceFormat": "PARQUET",
        "sourceUris": [uri],
        "hivePartitioningOptions": {"mode": "CUSTOM", "sourceUriPrefix": f"{root}/{keys}",
                                    "requirePartitionFilter": False},
        "schema": {"fields": bigquery_schema(TABLE_SCHEMA)},
    }
    columns = ", ".join(f"{k} {'DATE' if k == 'run_date' else 'STRING'}" for k in TABLE_PARTITION_KEYS)
    ddl = (
        f"CREATE OR REPLACE EXTERNAL TABLE `{table}`\n"
        f"WITH PARTITION COLUMNS ({columns})\n"
        f"OPTIONS (format = 'PARQUET', uris = ['{uri}'], hive_partition_uri_prefix = '{root}',\n"
        "         require_hive_partition_filter = false);\n"
    )
    return {"definition": definition, "ddl": ddl, "current": bigquery_current_view(table)}


def bigquery_current_view(table: str = "emotion.predictions", view: str = "emotion.current_predictions") -> str:
    """The DDL of a view holding the current prediction of every image: per uri, the rows of the
    latest run that predicted it (RANK, not ROW_NUMBER: with --faces all an image has a row per face) (an incremental run adds rows only for new or changed files, so an
    image's current row may come from an older run). One model's own current rows: the same query
    with `WHERE model_version = '...'` in place of `WHERE TRUE` (filtered before ranking, not after)."""
    return (
        f"CREATE OR REPLACE VIEW `{view}` AS\n"
        f"SELECT * FROM `{table}`\n"
        "WHERE TRUE\n"  # BigQuery accepts QUALIFY only beside a WHERE, GROUP BY or HAVING
        "QUALIFY RANK() OVER (PARTITION BY uri ORDER BY run_timestamp DESC, run_id DESC) = 1;\n"
    )
