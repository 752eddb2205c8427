"""The command line: one module per group of commands, ``common`` below them, ``app`` above."""
