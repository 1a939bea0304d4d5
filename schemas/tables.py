"""Parquet schemas of every table the pipelines write, and their BigQuery JSON schemas.

Types are chosen so that DuckDB, pandas and BigQuery read them without casting:
strings, int64, float64, bool and UTC microsecond timestamps only.
"""

from __future__ import annotations

import json

import pyarrow as pa

from schemas.labels import LABELS

TABLES_VERSION = 1

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
        pa.field("run_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

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
