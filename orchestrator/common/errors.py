"""User-facing errors: one line per problem, naming the field, and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emergence_core.registry import did_you_mean

__all__ = ["RuntimeFault", "UsageError", "check_tracking_uri", "checked", "cli_tracking_uri",
           "format_validation_error", "posix_run_dir", "read_yaml"]


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


_TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                     "databricks-uc", "uc", "file")


def check_tracking_uri(value: str | None) -> str | None:
    """A tracking URI MLflow can open, checked by its scheme alone (nothing is contacted):
    sqlite, http(s), a SQL database (``postgresql+psycopg2://`` too), databricks, file, or a
    scheme an installed MLflow plugin registers. ValueError naming what to give instead."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an empty tracking URI: give e.g. sqlite:///ABSOLUTE/PATH/mlflow.db "
                         "or http://HOST:PORT")
    scheme, sep, rest = value.partition("://")
    if not sep:
        if value.startswith(("sqlite:", "file:")):
            raise ValueError(f"{value!r}: write sqlite:///ABSOLUTE/PATH (three slashes)")
        raise ValueError(f"{value!r} is a plain path, MLflow's file store, which MLflow 3 "
                         "refuses for new stores; use sqlite:///ABSOLUTE/PATH/mlflow.db")
    base = scheme.lower().split("+", 1)[0]
    if base in _TRACKING_SCHEMES:
        if base in ("http", "https") and not rest.split("/", 1)[0]:
            raise ValueError(f"{value!r}: no host; use {scheme}://HOST:PORT")
        return value
    from importlib.metadata import entry_points

    if base in {e.name for e in entry_points(group="mlflow.tracking_store")}:
        return value
    raise ValueError(f"unknown tracking URI scheme {scheme + '://'!r} in {value!r}: use "
                     "sqlite:///ABSOLUTE/PATH/mlflow.db, http(s)://HOST:PORT, "
                     "postgresql://, mysql:// or databricks")


def cli_tracking_uri(value: str | None) -> str | None:
    """``--tracking-uri`` checked at the edge: a bad one is one UsageError line."""
    try:
        return check_tracking_uri(value)
    except ValueError as e:
        raise UsageError(f"--tracking-uri: {e}") from None


class RuntimeFault(Exception):
    """Not the input but the world: a service that does not answer. One line, exit code 1."""

    exit_code = 1


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
    cls = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        cls = getattr(field, "annotation", None) if field is not None else None
        if cls is None:
            return ""
    names = list(getattr(cls, "model_fields", {}))
    return did_you_mean(str(loc[-1]), names, cutoff=0.6, prefix="; ")


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


def read_yaml(path: Path, what: str = "sweep file") -> Any:
    """A sweep file's parsed YAML; a missing file, a folder, bad YAML, a key given twice, a
    top-level key that is not a name, or text that is not UTF-8 is one UsageError line."""
    from emergence_core.readers import UnreadableFile
    from emergence_core.readers import read_yaml as read

    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a {what}; give the YAML file, e.g. "
                         "sweeps/smoke.yaml")
    if not path.is_file():
        raise UsageError(f"{path}: no such {what}")
    try:
        return read(path, f"fix the {what}", what=what)
    except UnreadableFile as e:
        raise UsageError(str(e)) from None
