"""`emotion predict`: Beam batch inference -> Parquet predictions, evaluation and a summary (and the
partitioned table with --table). `launcher` is the command, `pipeline` the composite, `options` its
frozen options; the model runs through `inference` (Beam's RunInference)."""
