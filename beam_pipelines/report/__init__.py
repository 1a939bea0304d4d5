"""`emotion report`: one self-contained HTML page of an ingest, train, predict or compare output
(`launcher`), from forgiving reads (`inputs`), section kinds (`sections`) and Jinja2 templates."""
