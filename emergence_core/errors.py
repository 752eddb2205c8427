"""What every stage says about an error it reports: its first line, typed.

Standard library only, at the bottom of the tower: the trial, the run folder and the
orchestrator all report a caught error the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["first_line", "warn_once"]

_WARNED: set[Path] = set()


def first_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut at ``limit`` characters): one line for a
    message that may run over many (a traceback's, a library's); the type alone for none."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit]}" if text else type(err).__name__


def warn_once(path: Path, text: str) -> None:
    """Log ``text`` as a warning the first time ``path`` is reported in this process: a file
    skipped at every pass of a loop is named once."""
    if path not in _WARNED:
        _WARNED.add(path)
        logging.getLogger("emerge").warning(text)
