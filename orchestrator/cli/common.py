"""What every command shares: one voice for bad input, ``--set`` parsing, the console.

Commands import this module; it imports no command, so there is no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from orchestrator.common.errors import RuntimeFault, UsageError, format_validation_error

__all__ = ["err_console", "fail", "handles_usage_errors", "parse_sets", "stops_cleanly"]

F = TypeVar("F", bound=Callable[..., Any])


def fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def handles_usage_errors(fn: F) -> F:
    """Turn bad input anywhere below a command into one line per problem and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from emergence_core.extensions import ExtensionError
        from emergence_core.readers import UnreadableFile
        from emergence_core.registry import RegistryError
        from emergence_core.run_folder import RunFolderError

        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            fail(e.problems)
        except RuntimeFault as e:
            fail([str(e)], code=1)
        except ValidationError as e:
            fail(format_validation_error(e))
        except (RegistryError, RunFolderError, ExtensionError, UnreadableFile) as e:
            fail([str(e)])
        except OSError as e:  # the machine, not the input: a full disk, a lost mount
            if e.errno is None:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            fail([f"{e.strerror or e}{where}; nothing half-written was kept: fix it and run "
                  "the same command again to resume"], code=1)

    return wrapper  # type: ignore[return-value]


def stops_cleanly(fn: F) -> F:
    """SIGTERM, SIGHUP and Ctrl-C stop a command that runs no Ray driver (analyze, multiverse,
    probe) with one line and the signal's exit code (143, 129, 130). Such a command writes
    through a staging folder or a temporary file and an atomic rename, and removes what it
    staged when the interrupt passes through it, so what it had written before stays whole
    and what it was writing is gone. Without this, SIGTERM ended the process at once and
    left the staging folder (``.report.tmp-<id>/``) behind."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from orchestrator.common.signals import exit_code, stop_signals

        with stop_signals() as stop:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                typer.echo(f"stopped by {stop.name}: what was being written was removed, what "
                           "was written before is whole; run the same command again",
                           err=True)
                raise typer.Exit(exit_code(stop)) from None

    return wrapper  # type: ignore[return-value]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs into a nested dict; values are read as YAML scalars/lists."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set probe.n_probes=100")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UsageError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {p} is set both as a value and a section")
        node[leaf] = value
    return out


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
