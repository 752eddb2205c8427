"""What the rooms share: one-line user errors and the YAML reader (``errors``), live progress
boards (``progress``). Imports nothing else of orchestrator."""
