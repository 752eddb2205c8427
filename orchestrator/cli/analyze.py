"""``emerge analyze RUN_DIR``: the statistics stage over a run folder, logged to MLflow.

The report (``write_report``: Markdown, CSV tables, PNG figures, ``report.json``) is the
product. MLflow gets a copy on the sweep's parent run (``orchestrator.tracking.report``
logs it): a tracking store that is down costs one line, never the report; an ``emerge
train`` folder has no MLflow and is only reported.

Settings, later ones winning: ``AnalysisSettings``' defaults, the frozen sweep file's
``emergence`` rule (threshold, persistence) and ``analysis:`` section if it has one,
``--set KEY=VALUE``, then ``--threshold`` and ``--persistence``.

``orchestrator.cli.app`` registers the command; what a run folder holds is read through
``emergence_core.run_folder``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emergence_core.calibrations import calibrations
from emergence_core.errors import first_line
from emergence_core.folder_records import FolderInfo, describe, failure_record
from emergence_core.registry import did_you_mean
from emergence_core.run_folder import RunFolder
from orchestrator.cli.common import handles_usage_errors, parse_sets, stops_cleanly
from orchestrator.common.errors import UsageError, cli_tracking_uri, format_validation_error
from orchestrator.tracking.report import log_to_sweep_run

if TYPE_CHECKING:
    from emergence_core.analysis import AnalysisSettings, ReportSummary

__all__ = ["AnalyzeResult", "analyze_command", "analyze_run", "check_measures",
           "resolve_settings"]


def _listed(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def resolve_settings(spec: Mapping[str, Any], sets: Mapping[str, Any],
                     threshold: float | None = None,
                     persistence: int | None = None) -> AnalysisSettings:
    """The analysis settings: defaults < the sweep file's rule and ``analysis:`` < ``sets`` <
    ``threshold``/``persistence``; one UsageError line per unknown or bad field."""
    from pydantic import TypeAdapter, ValidationError

    from emergence_core.analysis import AnalysisSettings

    values: dict[str, Any] = {}
    rule = spec.get("emergence")
    if isinstance(rule, dict):
        values.update({k: rule[k] for k in ("threshold", "persistence") if k in rule})
    section = spec.get("analysis")
    if isinstance(section, dict):
        values.update(section)
    values.update(sets)
    for key, value in (("threshold", threshold), ("persistence", persistence)):
        if value is not None:
            values[key] = value
    known = [f.name for f in fields(AnalysisSettings)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UsageError(*(
            f"analysis setting {k!r} is unknown"
            + did_you_mean(k, known, cutoff=0.6, prefix="; ")
            + " (the fields of AnalysisSettings, emergence_core/analysis/settings.py)"
            for k in unknown))
    try:
        return TypeAdapter(AnalysisSettings).validate_python(values)
    except ValidationError as err:
        raise UsageError(*format_validation_error(err)) from None


_MEASURE_FIELDS = ("signal_measure", "collapse_measure", "event_measures", "measures")


def check_measures(settings: AnalysisSettings, present: set[str] = frozenset()) -> None:
    """Refuse a measure name no measure has (a typo would otherwise be one "absent" line in
    the report): the canonical names, those of the registered expensive measures (plugins
    included), those in the table (``present``), each perhaps read at a position
    (``rankme@prompt_mean``). One line per unknown name, with the closest known one."""
    from emergence_core.analysis.settings import LOGPROB_NORM
    from emergence_core.config import ReadPosition
    from emergence_core.measure_registry import MEASURES
    from emergence_core.metrics import Measure

    known = {v for k, v in vars(Measure).items() if k.isupper() and isinstance(v, str)}
    known |= {LOGPROB_NORM, *present, *MEASURES}
    known |= {r for m in MEASURES.values() for r in m.rows}
    positions = set(ReadPosition.__args__)
    problems = []
    for name in _MEASURE_FIELDS:
        value = getattr(settings, name)
        for m in (value,) if isinstance(value, str) else value or ():
            base, _, at = m.partition("@")
            if m in known or (base in known and at in positions):
                continue
            problems.append(f"analysis setting {name}: unknown measure {m!r}"
                            + did_you_mean(base, sorted(known), cutoff=0.6, prefix="; "))
    if problems:
        raise UsageError(*problems)


def _table_measures(parts: list[Path]) -> set[str]:
    import pyarrow.parquet as pq

    out: set[str] = set()
    for p in parts:
        try:
            out |= set(pq.read_table(p, columns=["measure"])["measure"].unique().to_pylist())
        except Exception:  # a part that reads no further is noted by _readable_parts
            continue
    return out


def _readable_parts(info: FolderInfo) -> tuple[list[Path], list[str]]:
    """The live metric parts (superseded ones skipped) whose footer reads; notes on others."""
    from emergence_core.readers import UnreadableFile, check_parquet
    from emergence_core.store import metric_files

    good, bad = [], []
    for f in metric_files(info.path):
        try:
            check_parquet(f, "")
            good.append(f)
        except UnreadableFile as err:  # a damaged part loses its rows, not the whole report
            bad.append(f"{f.relative_to(info.path)} ({err.problem})")
    notes = [f"{len(bad)} metric parts could not be read and were left out: {_listed(bad, 5)}."
             ] if bad else []
    return good, notes


def _trial_rows(parts: list[Path]) -> list[str]:
    return sorted({p.parent.name for p in parts if p.parent.parent.name == "trial"})


def _diverged(info: FolderInfo, parts: list[Path]) -> dict[str, tuple[int | None, str]]:
    """Trials that diverged: their last good step and the reason."""
    folder = RunFolder(info.path)
    out = {}
    for t in sorted({*_trial_rows(parts), *info.launched}):
        record = failure_record(folder, t)
        if record is not None and record.get("kind") == "diverged":
            out[t] = (record.get("last_good"), str(record.get("line", "diverged")))
    return out


def _trial_notes(info: FolderInfo, parts: list[Path],
                 diverged: Mapping[str, tuple[int | None, str]]) -> list[str]:
    """Launched trials without rows, diverged trials, and trials that have not finished."""
    folder = RunFolder(info.path)
    with_rows = _trial_rows(parts)
    notes = []
    absent = [t for t in info.launched if t not in with_rows]
    if absent:
        notes.append(f"{len(absent)}/{len(info.launched)} launched trials have no metrics "
                     f"yet: {_listed(absent)}.")
    if diverged:
        notes.append(f"{len(diverged)} trial(s) diverged and stopped; rows after their last "
                     "good step are left out: " + "; ".join(
                         f"{t} ({line}; last good step {last})"
                         for t, (last, line) in diverged.items()) + ".")
    if info.kind in ("sweep", "train"):
        open_ = [t for t in with_rows if not folder.is_complete(t) and t not in diverged]
        if open_:
            notes.append(f"{len(open_)}/{len(with_rows)} trials have not finished; their rows "
                         f"so far are analysed: {_listed(open_)}.")
        notes += _environment_notes(folder, info.launched)
    return notes


def _environment_notes(folder: RunFolder, trials: Sequence[str]) -> list[str]:
    """A note when the finished trials ran on more than one build or instruction set: their
    seeds then fix training only to the last digits, and events near the threshold can move
    (docs/methods.md §2)."""
    from emergence_core.environment import environment_label
    from emergence_core.folder_records import completion

    by: dict[str, list[str]] = {}
    notes = []
    for trial in trials:
        try:
            done = completion(folder, trial)
        except (OSError, ValueError) as err:  # the trial still counts as finished
            notes.append(f"{first_line(err, 300)}; {trial}'s environment is not known.")
            continue
        env = (done or {}).get("environment")
        if isinstance(env, dict):
            by.setdefault(environment_label(env), []).append(trial)
    if len(by) < 2:
        return notes
    where = "; ".join(f"{label}: {_listed(ts)}" for label, ts in sorted(by.items()))
    return [*notes, f"The finished trials ran on {len(by)} environments, so their seeds fix "
            "training only to the last digits and an event near the threshold can fall a "
            f"probe step apart between them: {where}."]


def _scale_params(info: FolderInfo) -> dict[str, float]:
    """Parameter count per registered scale, for the figures (an ``emerge`` folder's scales
    are the registry's; a Pythia folder's model names already say their size)."""
    if info.kind not in ("sweep", "train"):
        return {}
    from emergence_core.scales import SCALES

    return {name: s.approx_params for name, s in SCALES.items() if s.approx_params}


def _apply_plugins(info: FolderInfo) -> None:
    """The sweep's plugins and declared scales, so that their tasks and measures are known."""
    if info.spec.get("plugins") or info.spec.get("define_scales"):
        from orchestrator.sweep.spec import apply_extensions

        apply_extensions(dict(info.spec))


@dataclass(frozen=True)
class AnalyzeResult:
    """What ``analyze_run`` did: the report written, and the line about MLflow."""

    info: FolderInfo
    summary: ReportSummary
    mlflow: str


def analyze_run(run_dir: Path, out: Path | None = None, *,
                sets: Mapping[str, Any] | None = None, threshold: float | None = None,
                persistence: int | None = None, tracking_uri: str | None = None,
                mlflow: bool = True) -> AnalyzeResult:
    """Analyse ``run_dir``'s metrics, write the report to ``out`` (default RUN_DIR/report),
    then log it to the sweep's MLflow parent run unless ``mlflow`` is False."""
    import polars as pl

    from emergence_core.analysis import analyze, empty_metrics, write_report
    from emergence_core.multiverse.report import report_section

    info = describe(RunFolder(run_dir))
    target = _report_target(info, out)
    _apply_plugins(info)
    settings = resolve_settings(info.spec, sets or {}, threshold, persistence)
    parts, notes = _readable_parts(info)
    check_measures(settings, _table_measures(parts))
    diverged = _diverged(info, parts)
    notes = [*info.notes, *_trial_notes(info, parts, diverged), *notes]
    metrics = (pl.scan_parquet([str(p) for p in parts], hive_partitioning=False) if parts
               else empty_metrics().lazy())
    for trial, (last_good, _) in diverged.items():
        after = pl.col("step") > (last_good if last_good is not None else -1)
        metrics = metrics.filter(~((pl.col("trial") == trial) & after))
    try:
        a = analyze(metrics, settings)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        notes.append(f"The metrics could not be read ({first_line(err, 300)}); reporting an "
                     "empty table.")
        a = analyze(empty_metrics(), settings)
    alerts, damaged = _alerts(info, diverged)
    a = replace(a, missing=(*notes, *damaged, *a.missing))
    try:
        summary = write_report(metrics, target, analysis=a,
                               calibrations=calibrations(RunFolder(info.path)),
                               scale_params=_scale_params(info), alerts=alerts,
                               sections=report_section(target / "multiverse"))
    except OSError as err:
        raise UsageError(f"cannot write the report to {target} ({first_line(err, 300)}); "
                         "choose another folder with --out") from None
    line = log_to_sweep_run(info, summary, tracking_uri) if mlflow \
        else "mlflow: skipped (--no-mlflow)"
    return AnalyzeResult(info=info, summary=summary, mlflow=line)


def _report_target(info: FolderInfo, out: Path | None) -> Path:
    """Where the report goes, refused (before anything is computed) where writing it would
    delete or rename what no report wrote: the run folder itself or a folder above it, an
    existing file, a folder of other files (``check_report_target``)."""
    from emergence_core.analysis import ReportTargetError, check_report_target

    target = (Path(out).expanduser().absolute() if out is not None
              else RunFolder(info.path).report_dir)
    where = f"--out {out}" if out is not None else f"the report folder {target}"
    if info.path == target or info.path.is_relative_to(target):
        raise UsageError(f"{where} is the run folder {info.path} or holds it; the report "
                         "replaces its folder whole: give a new folder, e.g. --out "
                         f"{RunFolder(info.path).report_dir}")
    try:
        check_report_target(target)
    except ReportTargetError as err:
        raise UsageError(str(err) if out is not None
                         else str(err).replace(f"--out {target}", where)
                         + " with --out") from None
    return target


def _alerts(info: FolderInfo, diverged: Mapping[str, tuple[int | None, str]]
            ) -> tuple[Any, list[str]]:
    """The run folder's live alerts as a polars frame, without those after a divergence
    (None when the folder has no alerts folder: a run from before alerts existed), and a
    note naming the alert parts that could not be read and were left out."""
    import polars as pl

    from emergence_core.store import read_alerts

    if not RunFolder(info.path).alerts_dir.is_dir():
        return None, []
    damaged: list[str] = []
    alerts = pl.from_arrow(read_alerts(info.path, damaged=damaged))
    for trial, (last_good, _) in diverged.items():
        alerts = alerts.filter(~((pl.col("trial") == trial)
                                 & (pl.col("step") > (last_good if last_good is not None
                                                      else -1))))
    notes = [f"{len(damaged)} alert parts could not be read and were left out: "
             f"{_listed(damaged, 5)}."] if damaged else []
    return alerts, notes


def _print(result: AnalyzeResult) -> None:
    s, h = result.summary, result.summary.headline
    tables = sum(f.startswith("tables/") for f in s.files)
    figures = sum(f.startswith("figures/") for f in s.files)
    st = s.analysis.settings
    typer.echo(f"report: {s.out_dir / 'report.md'} ({tables} tables, {figures} figures)")
    typer.echo(f"  {h['trials']:.0f} trials, {h['rows']:.0f} rows; accuracy events "
               f"{h['events/accuracy/emerged']:.0f}/{h['events/accuracy/series']:.0f} series; "
               f"top-down {h['topdown/count']:.0f}/"
               f"{h['topdown/combinations'] - h['topdown/undetermined']:.0f} with a verdict "
               f"({h['topdown/undetermined']:.0f} undetermined); threshold "
               f"{st.threshold:g}, persistence {st.persistence} (settings {st.config_hash()})")
    for note in s.missing:
        typer.echo(f"  missing: {note}")
    typer.echo(result.mlflow)


def analyze_command(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR",
        help="a run folder: a sweep's (runs/NAME) or an `emerge train` one")],
    out: Annotated[Path | None, typer.Option(
        help="report folder (default: RUN_DIR/report): new, empty, or an earlier report, "
             "which is replaced whole; a folder of other files is refused")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="accuracy an event must reach (default: the sweep file's, else 0.5)")] = None,
    persistence: Annotated[int | None, typer.Option(
        help="following probe steps it must hold for (default: the sweep file's, else 5)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="any AnalysisSettings field, e.g. --set n_bootstrap=500, "
                      "--set hard=[ADD:3,MUL:3] (repeatable)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one the sweep was launched with)")] = None,
    no_mlflow: Annotated[bool, typer.Option(
        "--no-mlflow", help="write the report only; log nothing to MLflow")] = False,
) -> None:
    """The study's statistics over RUN_DIR (emergence events, onsets and leads, collapse floors,
    precursor rates): write RUN_DIR/report and log it to the sweep's MLflow run."""

    @stops_cleanly
    @handles_usage_errors
    def run() -> None:
        _print(analyze_run(run_dir, out, sets=parse_sets(set_ or []), threshold=threshold,
                           persistence=persistence, tracking_uri=cli_tracking_uri(tracking_uri),
                           mlflow=not no_mlflow))

    run()
