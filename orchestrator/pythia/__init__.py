"""``emerge pythia``: the Pythia sweep file (``spec``) and its (model, revision) fan-out as
Ray tasks (``run``)."""
