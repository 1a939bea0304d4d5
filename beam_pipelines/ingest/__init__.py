"""`emotion ingest`: raw image folders -> validated, sharded TFRecords with a dead letter, a duplicate and
leakage report and data stats. `launcher` is the command, `pipeline` the composite (`Ingest`), and its
steps live beside their options (`options`, `shuffle`, `shards`, `stats`)."""
