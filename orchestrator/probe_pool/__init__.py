"""The probe pool: expensive measures on the trials' checkpoints, as Ray actors (``pool``),
fed by a queue of files in the run folder (``queue``); one job's steps (``job``), which
``emerge probe`` also runs on one checkpoint by hand (``one``)."""
