"""``python -m orchestrator.cli``: the ``emerge`` command."""

from orchestrator.cli.app import main

main()
