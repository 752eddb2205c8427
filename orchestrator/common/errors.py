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


def _close_fields(model: Any, loc: tuple[Any, ...]) -> str:
    """'; did you mean X?' for an unknown key, from the fields of the model at ``loc``."""
    import difflib

    cls = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        cls = getattr(field, "annotation", None) if field is not None else None
        if cls is None:
            return ""
    names = list(getattr(cls, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _shown(value: Any) -> str:
    """A value as the user wrote it (YAML/JSON style), not as Python prints it."""
    import json

    if isinstance(value, tuple | list):
        try:
            return json.dumps(list(value))
        except (TypeError, ValueError):
            return str(list(value))
    return repr(value)


def format_validation_error(err: Any, prefix: str = "",
                            only: Callable[[tuple[Any, ...]], bool] | None = None,
                            model: Any = None) -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``.

    ``only`` keeps the errors whose location it accepts; with ``model`` (the pydantic class
    validated), an unknown key gets the closest known field as a suggestion.
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
            hint = _close_fields(model, tuple(e["loc"])) if model is not None else ""
            lines.append(f"{where}: unknown key{hint}")
            continue
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {_shown(got)})"
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
