"""A sweep on Ray Tune: the sweep file (``spec``), the driver (``driver``), the Tune trainable
and its callback (``tune_run``, the only module importing Tune), what a trial reports and how
the driver reacts (``trial_events``, no Tune), the cluster checks (``cluster``), and what a
run folder says to people (``views``)."""
