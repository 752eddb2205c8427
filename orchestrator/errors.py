"""User-facing errors: one line per problem, naming the field, and exit code 2."""

from __future__ import annotations

from typing import Any

__all__ = ["UsageError", "format_validation_error"]


class UsageError(Exception):
    """Bad input from the user. Each entry of ``problems`` is printed as one line."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    path = ".".join(parts)
    return f"{prefix}.{path}" if prefix and path else (prefix or path or "(top level)")


def format_validation_error(err: Any, prefix: str = "") -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(tuple(e["loc"]), prefix)
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return lines
