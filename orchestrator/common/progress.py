"""Live progress in the terminal, for every command that runs long.

``SweepBoard``: a sweep's trials pending / running / done / failed, steps, emergence events
and the probe pool; ``PythiaBoard``: ``emerge pythia``'s (model, revision) tasks. In a
terminal each is a rich display; in a log, one line per change of its counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

__all__ = ["PythiaBoard", "SweepBoard"]


class _Board:
    """A rich Live display in a terminal (started and stopped as a context manager); in a
    log, subclasses print lines instead. Subclasses draw with ``_render``."""

    console: Console
    _live: Live | None = None
    _use_live = True

    def _render(self) -> Any:
        raise NotImplementedError

    def _closing_line(self) -> str | None:
        """Printed at the end when there was no live display."""
        return None

    def __enter__(self) -> Any:
        if self._use_live and self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.stop()
            self._live = None
        elif (line := self._closing_line()) is not None:
            self.console.print(line)


@dataclass
class _Trial:
    state: str = "pending"
    step: int = 0
    total: int = 0
    events: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    error: str | None = None
    alerts: int = 0


class SweepBoard(_Board):
    """A rich Live display driven by Tune callbacks (see ``tune_run``)."""

    def __init__(self, trials: dict[str, int], console: Console | None = None,
                 live: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.trials = {name: _Trial(total=total) for name, total in trials.items()}
        self._live: Live | None = None
        self._use_live = live and self.console.is_terminal
        self._last = 0.0
        self._printed_counts = ""
        self._probes: Any = None

    def _closing_line(self) -> str:
        return self.counts_line()

    # -- updates from the callbacks -----------------------------------------------------------

    def started(self, name: str) -> None:
        self._get(name).state = "running"
        self.refresh()

    def result(self, name: str, step: int, events: dict[int, int],
               alerts: tuple[str, ...] = (), n_alerts: int | None = None) -> None:
        t = self._get(name)
        if t.state != "done":  # a finished trial's result (the resume's first pass) keeps it done
            t.state = "running"
        t.step = step
        for line in alerts:
            self._note(f"[cyan]{name} {line}[/cyan]")
        if n_alerts is not None:
            t.alerts = n_alerts
        for lv, s in events.items():
            if lv not in t.events:
                t.events[lv] = s
                self._note(f"emergence: {name} level {lv} at step {s}")
        self.refresh()

    def finished(self, name: str, done: bool) -> None:
        t = self._get(name)
        if t.state == "failed":
            return  # ended on purpose after a failure it reported (a divergence)
        t.state = "done" if done else "stopped"
        if done:
            t.step = t.total
        self.refresh(force=True)

    def failed(self, name: str, error: str | None, will_retry: bool) -> None:
        t = self._get(name)
        if will_retry:
            t.retries += 1
            t.state = "retrying"
            why = f" ({escape(error)})" if error else ""
            self._note(f"[yellow]{name} failed{why}; retrying from its last checkpoint[/yellow]")
        else:
            t.state, t.error = "failed", error
            self._note(f"[red]{name} failed: {escape(error or 'unknown error')}[/red]")
        self.refresh(force=True)

    def probes(self, counts: Any) -> None:
        """The probe pool's counters (queued, running, done, failed); from its thread."""
        self._probes = counts
        self.refresh()

    def note(self, text: str) -> None:
        self._note(text)

    # -- rendering ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("pending", "running", "done", "failed", "retrying", "stopped")}
        for t in self.trials.values():
            out[t.state] += 1
        return out

    def counts_line(self) -> str:
        c = self.counts()
        events = sum(len(t.events) for t in self.trials.values())
        extra = "".join(f", {c[k]} {k}" for k in ("retrying", "stopped") if c[k])
        alerts = sum(t.alerts for t in self.trials.values())
        line = (f"trials: {c['done']} done, {c['running']} running, {c['pending']} pending, "
                f"{c['failed']} failed{extra} | emergence events: {events}"
                + (f" | live alerts: {alerts}" if alerts else ""))
        p = self._probes
        if p is not None:
            line += (f" | probes: {p.queued} queued, {p.running} running, {p.done} done"
                     + (f", {p.failed} failed" if p.failed else ""))
        return line

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        else:
            line = self.counts_line()
            if line != self._printed_counts:  # plain logs: print on change only
                self._printed_counts = line
                self.console.print(line)

    def _note(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            self.console.print(text)

    def _get(self, name: str) -> _Trial:
        return self.trials.setdefault(name, _Trial())

    def _render(self) -> Group:
        bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[events]}"))
        running = [(n, t) for n, t in self.trials.items() if t.state in ("running", "retrying")]
        for name, t in running[:12]:
            ev = " ".join(f"L{lv}@{s}" for lv, s in sorted(t.events.items()))
            shown = (f"events {ev}" if ev else "") + (f" alerts {t.alerts}" if t.alerts else "")
            bars.add_task(name, total=max(t.total, 1), completed=t.step, events=shown.strip())
        table = Table.grid(padding=(0, 1))
        table.add_row(Text(self.counts_line(), style="bold"))
        if len(running) > 12:
            table.add_row(Text(f"... and {len(running) - 12} more running", style="dim"))
        return Group(table, bars)


class PythiaBoard(_Board):
    """Live progress: (model, revision) tasks done / running / failed / skipped.

    In a terminal, a rich bar; in a log (not a terminal), one counts line per finished task.
    """

    def __init__(self, total: int, skipped: int, console: Console) -> None:
        self.console, self.total, self.skipped = console, total, skipped
        self.running: list[str] = []
        self.n_done = self.n_failed = 0
        self._live: Live | None = None
        self._printed = ""

    def remaining(self) -> int:
        return self.total - self.n_done - self.n_failed

    def started(self, label: str) -> None:
        self.running.append(label)
        if self._live is not None:  # a log gets a line per finished task only
            self._refresh()

    def done(self, label: str) -> None:
        self.running.remove(label)
        self.n_done += 1
        self._refresh()

    def failed(self, label: str, line: str) -> None:
        self.running.remove(label)
        self.n_failed += 1
        (self._live.console if self._live else self.console).print(
            f"[red]failed: {escape(line)}[/red]", soft_wrap=True)
        self._refresh()

    def counts_line(self) -> str:
        pending = self.remaining() - len(self.running)
        return (f"revisions: {self.n_done} done, {len(self.running)} running, {pending} "
                f"pending, {self.n_failed} failed, {self.skipped} skipped")

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        elif (line := self.counts_line()) != self._printed:
            self._printed = line
            self.console.print(line, soft_wrap=True)

    def _render(self) -> Group:
        bar = Progress(TextColumn("pythia"), BarColumn(), MofNCompleteColumn())
        bar.add_task("", total=max(self.total, 1), completed=self.n_done + self.n_failed)
        shown = ", ".join(self.running[:4]) + (" ..." if len(self.running) > 4 else "")
        return Group(Text(self.counts_line(), style="bold"), bar,
                     Text(f"running: {shown}" if shown else "", style="dim"))
