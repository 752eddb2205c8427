"""The probe pool: expensive measures on the trials' checkpoints, as Ray actors (``pool``),
fed by a queue of files in the run folder (``queue``)."""
