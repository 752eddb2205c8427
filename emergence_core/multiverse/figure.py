"""The specification curve of one claim (Simonsohn, Simmons and Nelson 2020, Nature Human
Behaviour 4: 1208-1214): the statistic under every specification, sorted, with its interval;
the headline specification marked; the published figure as a band; and beneath, one row per
choice, a mark where the specification takes that option."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emergence_core.multiverse.claims import Claim

__all__ = ["CHOICES", "spec_curve"]

# the columns of a multiverse table that are choices, in the order they are drawn
CHOICES = ("formula", "centre", "position", "reading", "samples", "scope", "rule",
           "threshold")
_VERDICT = {"reproduced": "tab:green", "not reproduced": "tab:red",
            "not measurable": "0.6"}


def spec_curve(table: pl.DataFrame, claim: Claim, path: Path) -> Path:
    """Draw ``claim``'s rows of a ``multiverse_table`` to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    rows = (table.filter((pl.col("claim") == claim.key) & pl.col("value").is_not_null())
            .sort("value").with_row_index("x"))
    if rows.height == 0:
        raise ValueError(f"claim {claim.key!r} has no specification with a value")
    choices = [c for c in CHOICES if rows[c].drop_nulls().n_unique() > 1]
    options = [(c, v) for c in choices for v in sorted(rows[c].drop_nulls().unique().to_list())]
    fig = Figure(figsize=(max(7.0, 0.06 * rows.height + 4), 3.2 + 0.17 * len(options)))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, max(1, 0.17 * len(
        options) / 0.6)])
    if claim.reference is not None:
        lo, hi = claim.reference
        top.axhspan(lo, hi if hi > lo else lo + 1e-9, color="tab:blue", alpha=0.15, lw=0,
                    label=f"the study: {claim.study}")
        if hi == lo:
            top.axhline(lo, color="tab:blue", lw=1.5)
    x, v = rows["x"].to_numpy(), rows["value"].to_numpy()
    colours = [_VERDICT[r] for r in rows["verdict"].to_list()]
    has = rows["lo"].is_not_null() & rows["hi"].is_not_null()
    for xi, lo_, hi_, c in zip(x[has.to_numpy()], rows.filter(has)["lo"], rows.filter(has)["hi"],
                               [c for c, h in zip(colours, has, strict=True) if h],
                               strict=True):
        top.vlines(xi, lo_, hi_, color=c, lw=0.8, alpha=0.6)
    top.scatter(x, v, c=colours, s=12, zorder=3)
    head = rows.filter(pl.col("headline"))
    if head.height:
        top.scatter(head["x"], head["value"], marker="*", s=160, color="black", zorder=4,
                    label="headline specification")
    for verdict, c in _VERDICT.items():
        top.scatter([], [], color=c, s=12, label=verdict)
    top.set_ylabel(claim.key.replace("_", " "))
    top.set_title(claim.text, fontsize=9)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for i, (c, opt) in enumerate(options):
        on = rows.filter(pl.col(c) == opt)["x"].to_numpy()
        bottom.scatter(on, [i] * len(on), marker="|", s=30, color="0.2")
    bottom.set_yticks(range(len(options)), [f"{c}: {o}" for c, o in options], fontsize=7)
    bottom.invert_yaxis()
    bottom.set_xlabel(f"specification ({rows.height}, sorted by the statistic)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path
