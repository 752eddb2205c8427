"""The study's headline claims beside this run's numbers, read from the committed CSVs only.

    python studies/cpu-s0/claims.py                   # print the tables (markdown)
    python studies/cpu-s0/claims.py --write           # refresh them in README.md
    python studies/cpu-s0/claims.py --report DIR      # the same tables for another report

Every number in the README's tables is printed here from ``report/tables`` (the re-issued
run's claims from ``reissue/tables``), and the
definition multiverse's summary from ``multiverse/multiverse.csv`` (``emerge multiverse``'s
output for the re-issued run, beside ``report/``);
``tests/test_study_report.py`` checks that the README holds exactly this output. The verdict
rule is mechanical: *reproduced* when this run's 95% interval overlaps the study's range,
*not reproduced* when it does not, *not measurable here* when the run has nothing to
compare (one scale, too few events).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows(tables: Path, name: str) -> list[dict[str, str]]:
    with open(tables / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _num(v: str | None) -> float | None:
    if v is None or v == "" or v.lower() == "nan":
        return None
    return float(v)


@dataclass(frozen=True)
class Claim:
    claim: str
    study: str
    span: tuple[float, float] | None  # the study's figure as a range; None: no comparison
    here: str  # this run's figure, with its interval
    interval: tuple[float, float] | None  # this run's interval on the same scale

    @property
    def verdict(self) -> str:
        if self.span is None or self.interval is None:
            return "not measurable here"
        lo, hi = self.interval
        return "reproduced" if lo <= self.span[1] and hi >= self.span[0] else "not reproduced"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# A rate over events says nothing about a measure that has no onset at most of them (its
# series too short or too noisy for a change point): such a claim is "not measurable here".
MIN_ONSETS = 5


def _rate(row: dict[str, str] | None, cls: str) -> tuple[str, tuple[float, float] | None]:
    """``k/n (rate, lo-hi, method)`` of one class in a rates row, and its interval (None
    when fewer than MIN_ONSETS of the events have an onset of the measure)."""
    if row is None or int(row["n"]) == 0:
        return "no events", None
    k, n = int(row[f"{cls}_k"]), int(row["n"])
    onsets = n - int(row["no_onset_k"])
    lo, hi = _num(row[f"{cls}_lo"]), _num(row[f"{cls}_hi"])
    interval = None if lo is None or hi is None or onsets < MIN_ONSETS else (lo, hi)
    return (f"{k}/{n} ({_fmt(k / n)}; {_fmt(lo)}-{_fmt(hi)}, {row['ci_method']}; "
            f"{onsets} with an onset)", interval)


def _rates_row(rates: list[dict[str, str]], measure: str, split_kind: str = "all",
               split: str = "all") -> dict[str, str] | None:
    for r in rates:
        if (r["event"], r["measure"], r["split_kind"], r["split"]) == (
                "accuracy", measure, split_kind, split):
            return r
    return None


def claims(report: Path) -> list[Claim]:
    tables = report / "tables"
    out: list[Claim] = []

    floors = [r for r in _rows(tables, "floor_summary") if r["task"] == "MOD"]
    if floors:
        lo = min(float(r["floor_min"]) for r in floors)
        hi = max(float(r["floor_max"]) for r in floors)
        per_level = ", ".join(f"L{r['level']} {_fmt(float(r['floor']))}" for r in floors)
        n_seeds = max(int(r["n_seeds"]) for r in floors)
        here = f"{per_level} (all seeds and levels: {_fmt(lo)}-{_fmt(hi)}; {n_seeds} seeds)"
        out.append(Claim("MOD's centred RankMe collapses to a floor of about 2.0",
                         "about 2.0 (taken as 1.5-2.5)", (1.5, 2.5), here, (lo, hi)))
    else:
        out.append(Claim("MOD's centred RankMe collapses to a floor of about 2.0",
                         "about 2.0", (1.5, 2.5), "no MOD floor", None))
    scales = {r["scale"] for r in _rows(tables, "floor_summary")}
    out.append(Claim("...and the floors are the same at every scale",
                     "MOD about 2.0 at all five scales", None,
                     f"{len(scales)} scale(s) run: nothing to compare", None))

    td = _rows(tables, "topdown_summary")
    if td and int(td[0]["n"]):
        r = td[0]
        k, n = int(r["k"]), int(r["n"])
        lo, hi = _num(r["lo"]), _num(r["hi"])
        out.append(Claim("Collapse runs top-down (output layers first)",
                         "28-32 of 32 (0.88-1.00)", (28 / 32, 1.0),
                         f"{k}/{n} ({_fmt(k / n)}; {_fmt(lo)}-{_fmt(hi)}, {r['ci_method']}; "
                         f"{r.get('n_undetermined', 0)} undetermined)",
                         None if lo is None else (lo, hi)))
    elif td:
        layers = [int(x["n_layers"]) for x in _rows(tables, "topdown")]
        out.append(Claim("Collapse runs top-down (output layers first)",
                         "28-32 of 32 (0.88-1.00)", (28 / 32, 1.0),
                         f"undetermined at {td[0].get('n_undetermined')} of "
                         f"{len(layers)} (task, scale): at most {max(layers, default=0)} "
                         "collapsing layers vote, 3 are needed", None))

    rates = _rows(tables, "rates")
    first = _rows(tables, "rates_first")
    for measure, name in (("rankme", "RankMe"), ("rankme_uncentred", "(variant) uncentred RankMe")):
        for rule, table in (("departure", rates), ("first-change-after-the-floor", first)):
            here, interval = _rate(_rates_row(table, measure, "difficulty", "hard"),
                                   "precursor")
            out.append(Claim(f"{name} is a precursor of hard-task emergence ({rule} rule)",
                             "75-100%", (0.75, 1.0), here, interval))
    here, interval = _rate(_rates_row(rates, "llc"), "precursor")
    sync = _rates_row(rates, "llc")
    sync_k = "-" if sync is None else sync["synchronous_k"]
    f = _rates_row(first, "llc")
    f_k = "-" if f is None else f"{f['precursor_k']}/{f['n']}"
    out.append(Claim("The LLC moves with emergence, not before it (precursor rate, departure "
                     "rule)", "0 of 24 (0%)", (0.0, 0.0),
                     f"{here}; synchronous: {sync_k}; first-change rule: precursor {f_k}",
                     interval))
    for measure, name in (("hessian_lambda_max", "top eigenvalue"), ("hessian_trace", "trace")):
        row = _rates_row(rates, measure)
        here, interval = _rate(row, "lagging")
        others = "" if row is None else (f"; precursor {row['precursor_k']}, synchronous "
                                         f"{row['synchronous_k']}, unresolved "
                                         f"{row['unresolved_k']}")
        f = _rates_row(first, measure)
        if f is not None:
            others += f"; first-change rule: lagging {f['lagging_k']}/{f['n']}"
        out.append(Claim(f"Hessian measures lag emergence (lagging rate, {name}, departure "
                         "rule)", "lagging (taken as a majority: 50-100%)", (0.5, 1.0),
                         here + others, interval))

    pred = _rows(tables, "prediction")
    conc = next((r for r in pred if (r["signal"], r["statistic"], r["scope"]) ==
                 ("onset", "concordance", "all")), None)
    if conc is not None and int(conc["n"]):
        lo, hi = _num(conc["lo"]), _num(conc["hi"])
        out.append(Claim("Within-class concordance of geometric onsets with emergence order",
                         "52-69%", (0.52, 0.69),
                         f"{int(float(conc['k']))}/{conc['n']} ({_fmt(_num(conc['value']))}; "
                         f"{_fmt(lo)}-{_fmt(hi)}, {conc['ci_method']})",
                         None if lo is None else (lo, hi)))
    rev = next((r for r in pred if (r["signal"], r["statistic"], r["scope"]) ==
                ("onset", "reversal", "all")), None)
    n_rev = 0 if rev is None else int(rev["n"])
    out.append(Claim("Ordering reversals between scales that the signal gets wrong",
                     "26%", None, f"{n_rev} reversal pair(s): one scale run", None))
    return out


def claims_table(report: Path) -> str:
    lines = ["| the study's claim | the study | this run (95% interval) | verdict |",
             "|---|---|---|---|"]
    lines += [f"| {c.claim} | {c.study} | {c.here} | {c.verdict} |" for c in claims(report)]
    return "\n".join(lines)


def variants_table(report: Path) -> str:
    """Centring and pooling: floors, top-down verdicts and precursor counts per variant."""
    lines = ["| variant | median floor | top-down (k/n) | precursor of accuracy events (k/n) "
             "| what changes against the headline |", "|---|---|---|---|---|"]
    for r in _rows(report / "tables", "variants"):
        pre = f"{r['precursor_k']}/{r['precursor_n']}" if r["precursor_n"] else "-"
        if r["precursor_n"] and r.get("precursor_first_k"):
            pre += f" (first-change rule {r['precursor_first_k']}/{r['precursor_n']})"
        td = (f"{r['topdown_k']}/{r['topdown_n']}" if r["topdown_n"] and int(r["topdown_n"])
              else ("undetermined" if r["topdown_n"] else r["topdown_ci"]))
        lines.append(f"| {r['variant']} | {_fmt(_num(r['floor_median']))} | {td} | {pre} | "
                     f"{r['changes']} |")
    return "\n".join(lines)


def rules_table(report: Path) -> str:
    """The onset rules: the change point opening the event's regime (departure), the first
    change after the floor (first) and the nearest one (nearest)."""
    lines = ["| measure | events | precursor (departure) | precursor (first change after the "
             "floor) | precursor (nearest change point) | same class: departure and first "
             "| same class: departure and nearest |", "|---|---|---|---|---|---|---|"]
    for r in _rows(report / "tables", "rule_agreement"):
        if r["event"] == "accuracy":
            lines.append(f"| {r['measure']} | {r['n']} | {r['departure_precursor_k']} | "
                         f"{r.get('first_precursor_k', '-')} | {r['nearest_precursor_k']} | "
                         f"{r.get('agree_first_k', '-')} | {r['agree_k']} |")
    return "\n".join(lines)


def grid_table(report: Path) -> str:
    """Sampling: cheap measures read on an expensive measure's coarser grid."""
    lines = ["| grid of | measure | events | precursor on that grid | precursor on its own "
             "grid | synchronous on that grid | on its own |", "|---|---|---|---|---|---|---|"]
    for r in _rows(report / "tables", "grid_summary"):
        if r["event"] == "accuracy" and r["grid"] != r["measure"]:
            lines.append(f"| {r['grid']} | {r['measure']} | {r['n']} | {r['precursor_k']} | "
                         f"{r['full_precursor_k'] or '-'} | {r['synchronous_k']} | "
                         f"{r['full_synchronous_k'] or '-'} |")
    return "\n".join(lines)


def hierarchy_table(report: Path, name: str = "hierarchy") -> str:
    """The measures ordered by median lead over accuracy events (the geometric hierarchy);
    ``name`` "hierarchy_first" for the first-change-after-the-floor rule's."""
    lines = ["| rank | measure | events with an onset | median lead (steps) | median lead "
             "(probe intervals) | precursor (k/n) |", "|---|---|---|---|---|---|"]
    for r in _rows(report / "tables", name):
        if r["event"] == "accuracy":
            lines.append(f"| {r['rank']} | {r['measure']} | {r['n_onsets']}/{r['n']} | "
                         f"{_fmt(_num(r['median_lead']), 1)} | "
                         f"{_fmt(_num(r['median_lead_intervals']))} | "
                         f"{r['precursor_k']}/{r['n']} |")
    return "\n".join(lines)


def multiverse_table(report: Path) -> str:
    """Each claim's verdicts over every definition (``emerge multiverse``), from the
    ``multiverse/multiverse.csv`` beside ``report``: the summary ``multiverse.md`` opens
    with."""
    import polars as pl

    from emergence_core.multiverse.claims import SCHEMA
    from emergence_core.multiverse.report import summary_lines

    path = report.parent / "multiverse" / "multiverse.csv"
    if not path.exists():
        return f"(no definition multiverse: {path} is missing)"
    return "\n".join(summary_lines(pl.read_csv(path, schema=SCHEMA))).rstrip("\n")


def reissue_claims_table(report: Path) -> str:
    """The claims table of the re-issued run (``reissue.yaml``), from the ``emerge analyze``
    tables committed in ``reissue/`` beside ``report``."""
    reissue = report.parent / "reissue"
    if not (reissue / "tables").is_dir():
        return f"(no re-issued run: {reissue / 'tables'} is missing)"
    return claims_table(reissue)


def reissue_events(report: Path) -> str:
    """How many of the first run's trial events the re-issue puts on the same step, from the
    two ``events.csv``: the training rows agree to the last digits only across machines."""
    reissue = report.parent / "reissue" / "tables"
    if not (reissue / "events.csv").is_file():
        return f"(no re-issued run: {reissue / 'events.csv'} is missing)"

    def events(tables: Path) -> dict[tuple[str, str, str], int | None]:
        return {(r["trial"], r["level"], r["measure"]): (int(r["step"]) if r["step"] else None)
                for r in _rows(tables, "events") if r["source"] == "trial"}

    first, again = events(report / "tables"), events(reissue)
    parts, shifts = [], []
    for measure, label in (("accuracy", "accuracy"),
                           ("logprob_norm", "normalised log-probability")):
        keys = sorted(k for k in first if k[2] == measure and k in again)
        same = sum(first[k] == again[k] for k in keys)
        reached = (sum(again[k] is not None for k in keys), sum(first[k] is not None
                                                                for k in keys))
        parts.append(f"{same} of {len(keys)} {label} events on the same step (reached: "
                     f"{reached[0]} here, {reached[1]} in the first run)")
        shifts += [(abs(again[k] - first[k]), k) for k in keys
                   if first[k] is not None and again[k] is not None]
    most, (trial, level, measure) = max(shifts)
    return (f"- {parts[0]};\n- {parts[1]};\n- the largest shift: {most} steps "
            f"({trial} L{level}, {measure}).")


BLOCKS = {"claims": claims_table, "hierarchy": hierarchy_table,
          "hierarchy_first": lambda report: hierarchy_table(report, "hierarchy_first"),
          "variants": variants_table, "rules": rules_table, "grids": grid_table,
          "multiverse": multiverse_table,
          "claims_reissue": reissue_claims_table, "reissue_events": reissue_events}


def refresh(readme: Path, report: Path) -> str:
    """``readme`` with each generated block (``<!-- NAME: generated by claims.py -->`` ...
    ``<!-- /NAME -->``) written afresh from ``report``'s tables."""
    body = readme.read_text()
    for name, make in BLOCKS.items():
        begin, end = f"<!-- {name}: generated by claims.py -->", f"<!-- /{name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(body):
            raise SystemExit(f"{readme} has no {begin} ... {end} block")
        text = make(report)
        body = pattern.sub(lambda _, t=text, b=begin, e=end: f"{b}\n{t}\n{e}", body)
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, default=HERE / "report")
    ap.add_argument("--write", action="store_true", help="refresh the table in README.md")
    args = ap.parse_args()
    if args.write:
        readme = HERE / "README.md"
        readme.write_text(refresh(readme, args.report))
    for make in BLOCKS.values():
        print(make(args.report), end="\n\n")


if __name__ == "__main__":
    main()
