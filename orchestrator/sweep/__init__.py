"""A sweep on Ray Tune: the sweep file (``spec``), the driver (``driver``), the Tune trainable
and its callback (``tune_run``, the only module importing Tune), the cluster checks
(``cluster``), and what a run folder says to people (``views``)."""
