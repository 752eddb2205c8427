"""Figures of the report (matplotlib, Agg, no pyplot state): PNG files beside the tables.

Each function draws one figure from an ``Analysis`` and writes it to ``path``; steps are on
a symlog axis because probes are log-spaced early and linear late.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from emergence_core.analysis.pipeline import Analysis

__all__ = ["floors_vs_scale", "lead_distributions", "rankme_heatmap", "trial_curves"]

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90)
    return path


def _level_colour(level: int | None, levels: list) -> str:
    return _COLOURS[levels.index(level) % len(_COLOURS)] if level in levels else "black"


def _draw(ax, name: str, rows: pl.DataFrame, levels: list, events: list[tuple],
          onsets: list[tuple]) -> None:
    parts = rows.sort("step").partition_by("level", as_dict=True, include_key=False)
    for level in levels:
        r = parts.get((level,))
        if r is not None and r.height:
            ax.plot(r["step"], r["value"], color=_level_colour(level, levels), lw=1,
                    label="pooled" if level is None else f"L{level}")
    for marks, style in ((events, "--"), (onsets, ":")):
        if marks:  # one collection per style: an axvline per mark costs a Line2D each
            ax.vlines([s for _, s in marks], 0, 1, transform=ax.get_xaxis_transform(),
                      colors=[_level_colour(lv, levels) for lv, _ in marks], linestyles=style,
                      lw=0.8)
    ax.set_xscale("symlog", linthresh=10)
    ax.xaxis.set_minor_locator(NullLocator())  # symlog's minor ticks cost more than the plot
    ax.set_xlim(left=0)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)


def trial_curves(a: Analysis, trial: str, path: Path) -> Path:
    """Accuracy (with each level's chance rate, sparse dots) and normalised log-prob per
    level, then each measure's headline series; accuracy events dashed, each event's onset
    (departure rule) dotted."""
    beh = a.behaviour.filter(pl.col("trial") == trial)
    ser = a.series.filter(pl.col("trial") == trial)
    events = (a.details.filter((pl.col("trial") == trial) & (pl.col("measure") == "accuracy")
                               & pl.col("step").is_not_null()).select("level", "step").rows())
    leads = a.leads.filter((pl.col("trial") == trial) & (pl.col("event") == "accuracy"))
    measures = sorted(set(ser["measure"].to_list()))
    levels = sorted(set(beh["level"].to_list()) | set(ser["level"].to_list()),
                    key=lambda x: (x is None, x))
    ncol = 3
    nrow = 1 + (len(measures) + ncol - 1) // ncol
    fig = Figure(figsize=(4.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, name in zip(axes[:2], ("accuracy", "logprob_norm"), strict=True):
        _draw(ax, name, beh.filter(pl.col("measure") == name), levels, events, [])
    chance = a.chances.filter(pl.col("trial") == trial).select("level", "chance").drop_nulls()
    if chance.height:  # the accuracy a constant answer gets: the event reads above it
        axes[0].hlines(chance["chance"].to_list(), 0, 1, transform=axes[0].get_yaxis_transform(),
                       colors=[_level_colour(lv, levels) for lv in chance["level"].to_list()],
                       linestyles=(0, (1, 3)), lw=0.8)
    for ax, name in zip(axes[ncol:], measures, strict=False):
        onsets = (leads.filter(pl.col("measure") == name).select("level", "onset_step")
                  .drop_nulls().rows())
        _draw(ax, name, ser.filter(pl.col("measure") == name), levels, events, onsets)
    for ax in [axes[2], *axes[ncol + len(measures):]]:
        ax.set_axis_off()
    if beh.height:
        axes[0].legend(fontsize=7, loc="upper left")
    height = fig.get_figheight()
    fig.suptitle(f"{trial}: dashed = accuracy emergence, dotted = onset", fontsize=10,
                 y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.3 / height, top=1 - 0.65 / height,
                        hspace=0.5, wspace=0.2)  # fixed: tight_layout triples drawing time
    return _save(fig, path)


def rankme_heatmap(a: Analysis, trial: str, path: Path) -> Path:
    """Layer x probe heatmap of the collapse measure (pooled levels) for one trial."""
    rows = a.collapse_rows.filter((pl.col("trial") == trial) & pl.col("level").is_null()
                                  & pl.col("layer").is_not_null())
    if rows.height == 0:
        raise ValueError(f"no pooled per-layer {a.settings.collapse_measure} rows for {trial}")
    steps = np.sort(rows["step"].unique().to_numpy())
    layers = np.sort(rows["layer"].unique().to_numpy())
    grid = np.full((layers.size, steps.size), np.nan)
    grid[np.searchsorted(layers, rows["layer"].to_numpy()),
         np.searchsorted(steps, rows["step"].to_numpy())] = rows["value"].to_numpy()
    fig = Figure(figsize=(9, 0.35 * layers.size + 1.8))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
    ticks = np.unique(np.linspace(0, steps.size - 1, 8).astype(int)) if steps.size else []
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
    ax.set_yticks(range(layers.size), [str(x) for x in layers], fontsize=7)
    ev = a.details.filter((pl.col("trial") == trial) & (pl.col("measure") == "accuracy")
                          & pl.col("step").is_not_null())
    for step in ev["step"].to_list():
        ax.axvline(float(np.searchsorted(steps, step)), color="white", ls="--", lw=0.8)
    ax.set_xlabel("step (probe index axis)")
    ax.set_ylabel("layer")
    ax.set_title(f"{trial}: {a.settings.collapse_measure} per layer (dashed: emergence)",
                 fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def lead_distributions(a: Analysis, path: Path, event: str = "accuracy") -> Path:
    """Lead of each measure in units of its stated tolerance (the ``tolerance`` column of
    the leads table, the same one the text and tables use), measures in hierarchy order;
    the band is +/- one tolerance (synchronous or unresolved)."""
    order = a.hierarchy.filter(pl.col("event") == event)["measure"].to_list()
    leads = a.leads.filter((pl.col("event") == event)
                           & pl.col("lead_tolerances").is_not_null())
    data = [leads.filter(pl.col("measure") == m)["lead_tolerances"].to_numpy() for m in order]
    fig = Figure(figsize=(max(5.0, 0.9 * len(order) + 2), 4))
    ax = fig.subplots()
    ax.axhspan(-1, 1, color="0.9", zorder=0)
    if order:
        ax.boxplot(data, showfliers=False)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=6, alpha=0.5)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("lead / stated tolerance; > 1: precursor")
    ax.set_title(f"Lead of each measure's onset before the {event} event", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def floors_vs_scale(a: Analysis, path: Path) -> Path:
    """Collapse floor (median over seeds, bars: min to max) against scale, one line per task
    level (per-level floors are the headline)."""
    s = a.floor_summary
    order = a.scale_order
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    units = sorted(set(s.select("task", "level").rows()), key=lambda u: (u[0], u[1] or 0))
    for i, (task, level) in enumerate(units):
        t = s.filter((pl.col("task") == task) & pl.col("level").eq_missing(level))
        task = task if level is None else f"{task} L{level}"
        x = np.array([order.index(v) for v in t["scale"].to_list()])
        y = t["floor"].to_numpy()
        err = np.vstack([y - t["floor_min"].to_numpy(), t["floor_max"].to_numpy() - y])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=task,
                    color=_COLOURS[i % len(_COLOURS)] if i < len(_COLOURS) else None)
    ax.set_xticks(range(len(order)), order, fontsize=8)
    ax.set_xlabel("scale")
    ax.set_ylabel(f"final-layer {a.settings.collapse_measure} floor")
    ax.set_title("Collapse floor against scale", fontsize=10)
    if s.height:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)
