"""Parquet schemas of every table the pipelines write, and their BigQuery JSON schemas.

Types are chosen so that DuckDB, pandas and BigQuery read them without casting:
strings, int64, float64, bool and UTC microsecond timestamps only.
"""

from __future__ import annotations

import json

import pyarrow as pa

from schemas.labels import LABELS

TABLES_VERSION = 2  # 2: predictions carry run_id; the partitioned table and the runs table

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # ingest or predict
    ]
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
    ]
)

# The appendable predictions table (`emotion predict --table ROOT`): Hive-style partitions
#   ROOT/model_version=<v>/run_date=<YYYY-MM-DD>/run_id=<id>/part-SSSSS.parquet
# The partition keys are folder names, not file columns (engines add them back: DuckDB with
# hive_partitioning, pyarrow with partitioning="hive", BigQuery with hive partitioning).
TABLE_PARTITION_KEYS = ("model_version", "run_date", "run_id")
TABLE_SCHEMA = pa.schema([f for f in PREDICTIONS_SCHEMA if f.name not in TABLE_PARTITION_KEYS])
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
    return {"definition": definition, "ddl": ddl}
