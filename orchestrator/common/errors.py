"""User-facing errors: one line per problem, naming the field, and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "checked", "format_validation_error", "posix_run_dir", "read_yaml"]


def checked(canon: Callable[[Any], Any], *errors: type[Exception]) -> Callable[[Any], Any]:
    """A pydantic field check from a canonicalising function that raises ``errors`` (the
    domain's one-line errors, e.g. TaskError): they become ValueError, which pydantic
    reports under the field's name."""

    def check(value: Any) -> Any:
        try:
            return canon(value)
        except errors as e:
            raise ValueError(str(e)) from None

    return check


def posix_run_dir(value: str | None) -> str | None:
    """A run folder is a POSIX path (local, or shared: NFS, EFS, a FUSE-mounted bucket)."""
    if value is not None and "://" in value:
        scheme = value.split("://", 1)[0]
        raise ValueError(f"{scheme}:// run folders are not supported: the run folder must be a "
                         "path every node mounts (NFS, EFS, or a bucket through a FUSE mount "
                         "such as mountpoint-s3)")
    return value


class UsageError(Exception):
    """Bad input from the user. Each entry of ``problems`` is printed as one line."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    path = prefix
    for p in loc:
        if isinstance(p, int):
            path += f"[{p}]"
        elif p != "[key]" and not str(p).startswith("function-"):
            path += f".{p}" if path else str(p)
    return path or "(top level)"


def format_validation_error(err: Any, prefix: str = "",
                            only: Callable[[tuple[Any, ...]], bool] | None = None) -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``.

    ``only`` keeps the errors whose location it accepts.
    """
    lines = []
    for e in err.errors():
        if only is not None and not only(tuple(e["loc"])):
            continue
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(tuple(e["loc"]), prefix)
        if where == "(top level)" and e["type"] == "value_error":
            lines.append(msg)
            continue
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return lines


def read_yaml(path: Path) -> Any:
    """A sweep file's parsed YAML; a missing file or bad YAML is one UsageError line."""
    import yaml

    if not path.is_file():
        raise UsageError(f"{path}: no such sweep file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{path}: invalid YAML{where}: {problem}") from None
