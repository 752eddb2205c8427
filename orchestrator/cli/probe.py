"""``emerge probe``: one expensive measure on one saved checkpoint, printed (or as JSON)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.common import handles_usage_errors, parse_sets, stops_cleanly

__all__ = ["probe"]

_SHOWN = ("value", "std", "converged", "checks", "init_loss", "mean_loss", "loss_rise",
          "max_rise", "rhat", "below_share", "drift_noise", "mala_acceptance", "precond_change",
          "n_beta", "eps", "gamma", "sampler", "lambda_max", "lambda_max_residual", "n_samples",
          "wall_s")


def pilot_grid_lines(grid: list[dict[str, Any]]) -> list[str]:
    """The LLC pilot's grid as a table: one line per setting tried, its chain length (and
    the spectral budget's predicted shortfall), its four checks, check 3's change with the
    margin its Monte Carlo error puts on it (+-); the localised tier's points say so (their
    check 4 is the stated bound k, so "k/10" is empty)."""
    def mark(ok: bool | None) -> str:
        return "-" if ok is None else ("ok" if ok else "FAIL")

    def judged(change: float | None) -> str:
        return "-" if change is None else f"{change:.1%}"

    lines = [f"{'c':>8} {'k':>7} {'eps':>9} {'gamma':>9} {'draws':>6} {'short':>6} "
             f"{'value':>9} {'rise':>9} {'R-hat':>6} {'stat':>4} {'basin':>5} {'eps/2':>6} "
             f"{'+-':>6} {'k/10':>6} {'MALA':>5} {'drift/noise':>11}"]
    for p in grid:
        head = (f"{p.get('step', math.nan):>8.4g} {p.get('localisation', math.nan):>7.0e} "
                f"{p['eps']:>9.3g} {p['gamma']:>9.3g} {_fmt(p.get('n_draws')):>6} "
                f"{judged(p.get('shortfall')):>6} ")
        if p.get("affordable") is False:
            lines.append(f"{head}not run: its chains would need more than max_draws")
            continue
        lines.append(
            f"{head}{_fmt(p['value']):>9} {_fmt(p.get('rise')):>9} "
            f"{_fmt(p['rhat']):>6} {mark(p.get('stationary')):>4} {mark(p.get('in_basin')):>5} "
            f"{judged(p.get('halving_change')):>6} {judged(p.get('halving_noise')):>6} "
            f"{judged(p.get('localisation_change')):>6} "
            f"{_fmt(p.get('mala_acceptance')):>5} {_fmt(p.get('drift_noise')):>11}"
            f"{'  localised' if p.get('tier') == 'localised' else ''}"
            f"{'  chosen' if p.get('passed') else ''}")
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


@stops_cleanly
@handles_usage_errors
def probe(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (emerge sweep or emerge train)")],
    measure: Annotated[str, typer.Option("--measure", "-m",
                                         help="expensive measure: llc, hessian, fisher, "
                                              "gradcov, or a plugin's")],
    step: Annotated[int, typer.Option("--step", "-s", help="a checkpoint step with weights")],
    trial: Annotated[str | None, typer.Option(
        help="trial name, e.g. COPY-s0-0 (needed when the run has several)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="a setting of the measure, e.g. --set eps=1e-6 (repeatable); wins over "
                      "the sweep file and the calibration; calibration.KEY=VALUE sets the "
                      "pilot's, e.g. --set 'calibration.steps=[0.1,0.05]'")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate/--no-calibrate", help="use the trial's calibration (the saved one, else "
                                           "a pilot now on its last checkpoint)")] = True,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate", help="run the pilot again even if the run has saved one")] = False,
    write: Annotated[bool, typer.Option(
        "--write", help="store the result in the run (rows, diagnostics, a new calibration)"
                        "; by default nothing is written")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
) -> None:
    """One expensive measure on one saved checkpoint of an existing run: value and diagnostics."""
    from orchestrator.common.errors import UsageError
    from orchestrator.probe_pool.one import probe_checkpoint
    from orchestrator.sweep.spec import load_spec

    if threads is not None and threads <= 0:
        raise UsageError(f"--threads must be positive, got {threads}")
    sets = parse_sets(set_ or [])
    out = probe_checkpoint(run_dir, measure, step, load_spec=load_spec, trial=trial, sets=sets,
                           calibrate=calibrate, recalibrate=recalibrate, write=write,
                           threads=threads)
    if as_json:
        out = {k: v for k, v in out.items() if k != "loss_trace"} | {
            "loss_trace": out.get("loss_trace")}
        typer.echo(json.dumps(out, default=str))
        return
    typer.echo(f"{out['measure']} of {out['trial']} at step {out['step']}: {_fmt(out['value'])}")
    for key in _SHOWN[1:]:
        if key in out and out[key] is not None:
            typer.echo(f"  {key:<20} {_fmt(out[key])}")
    if "status" in out:
        typer.echo(f"  {out['status']}")
    cal = out.get("calibration")
    if cal:
        kind = f" ({cal['kind']})" if cal.get("kind") else ""
        typer.echo(f"  calibration ({cal['source']}, pilot at step {cal['step']}): chosen "
                   f"{cal['chosen'] or 'nothing (not converged)'}{kind}")
        if cal.get("reason"):
            typer.echo(f"    {cal['reason']}")
        if cal.get("n_beta_lambda_max") is not None:
            line = (f"c and k relative to S = n_beta x lambda_max = "
                    f"{_fmt(cal['n_beta_lambda_max'])} (lambda_max {_fmt(cal.get('lambda_max'))}"
                    " at w*)")
            if cal.get("lambda_basin") is not None:
                line += (f"; the localised tier's to {_fmt(cal.get('localised_stiffness'))} "
                         f"(lambda_max {_fmt(cal['lambda_basin'])} where the loss has risen)")
            typer.echo(f"    {line}")
        for line in pilot_grid_lines(cal.get("grid") or []):
            typer.echo(f"    {line}")
    if out.get("written"):
        typer.echo("  written into the run")
