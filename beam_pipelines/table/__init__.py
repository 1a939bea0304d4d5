"""The appendable predictions table: every run of `emotion predict --table ROOT`, queryable as one.

    ROOT/model_version=<v>/run_date=<YYYY-MM-DD>/run_id=<id>/part-SSSSS.parquet   this run's rows
    ROOT/_runs/<run_id>.parquet                                                   one row per run
    ROOT/_bigquery/predictions.external.json, predictions.sql,                    BigQuery definitions
                   current_predictions.sql
    ROOT/_staging/<run_id>/                                                       a run in progress

A run writes its rows under ROOT/_staging/<run id>/ and its last step moves them into its own
partition, then writes its row of the runs table; other runs' partitions are never listed or
touched. Re-running a run id (`--run-id`) replaces that run's partition (found through its runs-table
row, wherever its model version and date put it); a failed run leaves no partition at all.

One writer per root: ROOT/_table.lock (gate.RootLock) is held from the launcher's checks to the
commit, so two runs (of one run id or not) never interleave their staging and partitions. The table
is committed with the run's --output in one transaction (base/outputs.commit, with TableCommit as its
`also`): both change, or neither. The partition's names (model version, date, run id) are checked as
safe names before they become a path, whether they come from the command line, the model's
metadata.json or a runs-table row.

Files are written for engines that prune: rows sorted by (predicted_label, confidence) within a file,
so label and confidence filters skip whole row groups by their min/max statistics; row groups of
128 Ki rows; ZSTD; the tables version in the schema metadata. Partition keys are folder names, not
columns (schemas.TABLE_PARTITION_KEYS).

Rows also record how they were predicted (tables version 3): the SHA-256 of the image file's bytes,
the TTA and the preprocessing (schemas.TABLE_SEEN_FIELDS), so that `--incremental` can skip an image
the model version's partitions already hold predicted the same way (predict/incremental.py). Files
written before carry none of the three; engines read them beside newer ones by column name (DuckDB:
union_by_name = true) with nulls there, and an incremental run predicts their images once more.
"""
