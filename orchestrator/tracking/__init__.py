"""MLflow, all of it: filled from the run folder's Parquet (``sync``: runs, rows, tags,
statuses), the run-id ledger that keeps one run per trial (``ledger``), which tracking store
and whether it can work (``store``), and the report of ``emerge analyze`` on the sweep's
parent run (``report``)."""
