"""The definition multiverse (docs/methods.md §4.1): the collapse measure under every stated
definition, recomputed offline from kept weights (``recompute``), and each claim's statistic
and verdict under every specification (``claims``), with its specification curve
(``figure``) and tables (``report``). ``emerge multiverse RUN_DIR`` runs it all."""
