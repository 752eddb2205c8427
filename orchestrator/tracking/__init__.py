"""MLflow, filled from the run folder's Parquet (``sync``): runs, rows, tags, statuses.
``emerge analyze`` logs its report through the same client."""
