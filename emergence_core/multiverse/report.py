"""A multiverse table written out: per claim its table, its specification curve, and a
markdown summary of how far its verdict depends on the definitions."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emergence_core.multiverse.claims import CLAIMS, SCHEMA, Claim
from emergence_core.multiverse.figure import CHOICES, spec_curve

__all__ = ["report_section", "summary_lines", "write_multiverse"]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _range(v: pl.Series) -> str:
    v = v.drop_nulls().drop_nans() if v.dtype.is_float() else v.drop_nulls()
    return "-" if v.len() == 0 else f"{_num(v.min())}-{_num(v.max())}"


def summary_lines(table: pl.DataFrame, claims: tuple[Claim, ...] = CLAIMS) -> list[str]:
    """Markdown: one row per claim (specifications, verdict counts, the statistic's range,
    the headline's value and verdict), then, per claim, the choices its verdict turns on."""
    out = ["| claim | the study | specifications | reproduced | not reproduced | not "
           "measurable | statistic (min-max) | headline |", "|---|---|---|---|---|---|---|---|"]
    turns: list[str] = []
    for c in claims:
        t = table.filter(pl.col("claim") == c.key)
        if t.height == 0:
            continue
        count = {v: int((t["verdict"] == v).sum()) for v in
                 ("reproduced", "not reproduced", "not measurable")}
        head = t.filter(pl.col("headline"))
        h = (f"{_num(head['value'][0])} ({head['verdict'][0]})" if head.height else "-")
        out.append(f"| {c.text} | {c.study} | {t.height} | {count['reproduced']} | "
                   f"{count['not reproduced']} | {count['not measurable']} | "
                   f"{_range(t['value'])} | {h} |")
        judged = t.filter(pl.col("verdict") != "not measurable")
        split = []
        for choice in CHOICES:
            if judged[choice].drop_nulls().n_unique() < 2:
                continue
            by = (judged.group_by(choice).agg((pl.col("verdict") == "reproduced").mean()
                                              .alias("share"), pl.len().alias("n"))
                  .drop_nulls(choice).sort(choice))
            split.append(f"{choice} " + ", ".join(
                f"{v} {s:.0%} of {n}" for v, s, n in by.select(choice, "share", "n").rows()))
        if split:
            turns.append(f"- {c.key}, share reproduced by option: " + "; ".join(split) + ".")
    return [*out, "", *(turns or ["- No claim has specifications with a verdict."]), ""]


def write_multiverse(table: pl.DataFrame, out: Path,
                     claims: tuple[Claim, ...] = CLAIMS) -> list[Path]:
    """``multiverse.csv`` (every row), per claim ``<claim>.csv`` and ``<claim>.png``, and
    a markdown summary beside them; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "multiverse.csv"]
    table.write_csv(files[0])
    lines = ["# Definition multiverse", "",
             "Each claim's statistic under every combination of the stated choices "
             "(docs/methods.md §4.1); `multiverse.csv` has every "
             "row, each claim its own table and specification curve.", "",
             *summary_lines(table, claims)]
    for c in claims:
        t = table.filter(pl.col("claim") == c.key)
        if t.height == 0:
            continue
        t.write_csv(out / f"{c.key}.csv")
        files.append(out / f"{c.key}.csv")
        try:
            files.append(spec_curve(table, c, out / f"{c.key}.png"))
            lines += [f"![{c.text}]({c.key}.png)", ""]
        except ValueError as err:  # no specification with a value: nothing to draw
            lines += [f"- {c.key}: no figure ({err}).", ""]
    (out / "multiverse.md").write_text("\n".join(lines))
    files.append(out / "multiverse.md")
    return files


def report_section(mv: Path) -> list[str]:
    """Markdown lines for ``emerge analyze``'s report.md on the multiverse ``write_multiverse``
    wrote in ``mv`` (the report's ``multiverse/``): its summary table and a link to its
    per-claim tables and curves; nothing when there is none."""
    if not (mv / "multiverse.md").is_file():
        return []
    lines = ["## Definition multiverse", "",
             "Each claim's statistic and verdict under every definition of the collapse "
             "measure, the onset rule and the threshold (`emerge multiverse`; methods §4.1). "
             f"Per claim a table and a specification curve: [{mv.name}/multiverse.md]"
             f"({mv.name}/multiverse.md).", ""]
    try:
        table = pl.read_csv(mv / "multiverse.csv", schema=SCHEMA)
    except (OSError, pl.exceptions.PolarsError) as err:
        return [*lines, f"- Its multiverse.csv cannot be read ({type(err).__name__}); run "
                        "`emerge multiverse` again.", ""]
    return [*lines, *summary_lines(table)]
