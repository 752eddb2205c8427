"""Figures of the report (matplotlib, Agg, no pyplot state): PNG files beside the tables.

Each function draws one figure from an ``Analysis`` and writes it to ``path``; ``caption``
gives each file's one-line caption for the report. Every figure stands on its own (axis
labels with units, every line in a legend, labelled colourbars, 150 dpi): a figure is
often seen alone, in MLflow or pasted into a note. Curves and heatmaps share one step axis,
symlog because probes are log-spaced early and linear late.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from emergence_core.analysis.pipeline import Analysis

__all__ = ["DPI", "caption", "floors_vs_scale", "lead_distributions", "rankme_heatmap",
           "trial_curves"]

DPI = 150
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_STEP_LABEL = "training step (symlog axis)"
# A series with at most this many points is drawn with a marker at each: an expensive
# measure's few checkpoints joined by straight lines would read as a measured curve.
SPARSE_POINTS = 40

# What each measure's value is, for axis and colourbar labels; a measure read at another
# position (``rankme@last``) takes its base measure's.
_UNITS = {
    "accuracy": "exact-match accuracy (fraction)",
    "token_accuracy": "answer-token accuracy (fraction)",
    "logprob_norm": "1 - logprob / logprob_chance (0: chance, 1: certain)",
    "logprob": "log-prob of the answer (nats)",
    "diag_loss": "loss per answer token (nats)",
    "train_loss": "loss per answer token (nats)",
    "rankme": "RankMe effective rank (dims)",
    "rankme_uncentred": "uncentred RankMe (dims)",
    "linear_probe": "linear-probe accuracy (fraction)",
    "llc": "LLC estimate (learning coefficient)",
    "fisher_erank": "Fisher effective rank (dims)",
    "gradcov_erank": "gradient-covariance effective rank (dims)",
    "hessian_lambda_max": "top Hessian eigenvalue",
    "hessian_trace": "Hessian trace",
}


def _measure_label(measure: str) -> str:
    """``measure``'s axis label: what the value is, and its unit where it has one."""
    return _UNITS.get(measure.split("@", 1)[0], measure)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _level_colour(level: int | None, levels: list) -> str:
    """One colour per task level; the series pooled over levels always black."""
    if level is None or level not in levels:
        return "black"
    return _COLOURS[[x for x in levels if x is not None].index(level) % len(_COLOURS)]


def _level_name(level: int | None) -> str:
    return "pooled over levels" if level is None else f"level {level}"


def _step_axis(ax) -> None:
    """The step axis every curve and heatmap shares."""
    ax.set_xscale("symlog", linthresh=10)
    ax.xaxis.set_minor_locator(NullLocator())  # symlog's minor ticks cost more than the plot
    ax.set_xlim(left=0)
    ax.set_xlabel(_STEP_LABEL, fontsize=7)


def _draw(ax, name: str, rows: pl.DataFrame, levels: list, events: list[tuple],
          onsets: list[tuple]) -> None:
    parts = rows.sort("step").partition_by("level", as_dict=True, include_key=False)
    for level in levels:
        r = parts.get((level,))
        if r is not None and r.height:
            sparse = r.height <= SPARSE_POINTS
            ax.plot(r["step"], r["value"], color=_level_colour(level, levels), lw=1,
                    marker="o" if sparse else None, ms=2.5)
    for marks, style in ((events, "--"), (onsets, ":")):
        if marks:  # one collection per style: an axvline per mark costs a Line2D each
            ax.vlines([s for _, s in marks], 0, 1, transform=ax.get_xaxis_transform(),
                      colors=[_level_colour(lv, levels) for lv, _ in marks], linestyles=style,
                      lw=0.8)
    _step_axis(ax)
    layer = rows["layer"].drop_nulls() if "layer" in rows.columns else []
    ax.set_title(name if not len(layer) else f"{name} (layer {layer.max()})", fontsize=9)
    ax.set_ylabel(_measure_label(name), fontsize=7)
    ax.tick_params(labelsize=7)
    if rows.height == 0:
        ax.text(0.5, 0.5, f"no {name} rows in this trial", ha="center", va="center",
                transform=ax.transAxes, fontsize=8, color="0.4")


def _curves_legend(ax, levels: list, chance: bool) -> None:
    """The whole figure's legend, in a panel of its own: one entry per line colour and
    per line style."""
    handles = [Line2D([], [], color=_level_colour(lv, levels), lw=1.5, label=_level_name(lv))
               for lv in levels]
    handles += [Line2D([], [], color="0.3", ls="--", lw=1, label="accuracy emergence step"),
                Line2D([], [], color="0.3", ls=":", lw=1, label="onset of the measure's change")]
    if chance:
        handles.append(Line2D([], [], color="0.3", ls=(0, (1, 3)), lw=1,
                              label="chance accuracy (constant answer)"))
    ax.set_axis_off()
    ax.legend(handles=handles, loc="center", fontsize=8, frameon=False,
              title="colour: task level", title_fontsize=8)


def trial_curves(a: Analysis, trial: str, path: Path) -> Path:
    """Accuracy (with each level's chance rate, sparse dots) and normalised log-prob per
    level, then each measure's headline series (per-layer measures at their final layer);
    accuracy events dashed, each event's onset (departure rule) dotted; a legend panel
    names every colour and style."""
    beh = a.behaviour.filter(pl.col("trial") == trial)
    ser = a.series.filter(pl.col("trial") == trial)
    events = (a.details.filter((pl.col("trial") == trial) & (pl.col("measure") == "accuracy")
                               & pl.col("step").is_not_null()).select("level", "step").rows())
    leads = a.leads.filter((pl.col("trial") == trial) & (pl.col("event") == "accuracy"))
    measures = sorted(set(ser["measure"].to_list()))
    levels = sorted(set(beh["level"].to_list()) | set(ser["level"].to_list()),
                    key=lambda x: (x is None, x))
    ncol = 3
    panels = 2 + len(measures) + 1  # the last one holds the legend
    nrow = (panels + ncol - 1) // ncol
    fig = Figure(figsize=(4.2 * ncol, 2.8 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, name in zip(axes[:2], ("accuracy", "logprob_norm"), strict=True):
        _draw(ax, name, beh.filter(pl.col("measure") == name), levels, events, [])
    chance = a.chances.filter(pl.col("trial") == trial).select("level", "chance").drop_nulls()
    if chance.height:  # the accuracy a constant answer gets: the event reads above it
        axes[0].hlines(chance["chance"].to_list(), 0, 1, transform=axes[0].get_yaxis_transform(),
                       colors=[_level_colour(lv, levels) for lv in chance["level"].to_list()],
                       linestyles=(0, (1, 3)), lw=0.8)
    for ax, name in zip(axes[2:], measures, strict=False):
        onsets = (leads.filter(pl.col("measure") == name).select("level", "onset_step")
                  .drop_nulls().rows())
        _draw(ax, name, ser.filter(pl.col("measure") == name), levels, events, onsets)
    _curves_legend(axes[panels - 1], levels, chance.height > 0)
    for ax in axes[panels:]:
        ax.remove()  # no empty frames: the grid's last row may be short
    height = fig.get_figheight()
    fig.suptitle(f"{trial}: behaviour and measures against training step", fontsize=10,
                 y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.55 / height, top=1 - 0.65 / height,
                        hspace=0.7, wspace=0.28)  # fixed: tight_layout triples drawing time
    return _save(fig, path)


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each probe step: midway between neighbours, so every cell sits
    on its own step on the shared step axis."""
    if steps.size == 1:
        return np.array([max(steps[0] - 0.5, 0), steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[max(steps[0] - (mid[0] - steps[0]), 0)], mid,
                           [steps[-1] + (steps[-1] - mid[-1])]])


def rankme_heatmap(a: Analysis, trial: str, path: Path) -> Path:
    """Layer x step heatmap of the collapse measure (pooled levels) for one trial, on the
    curves' step axis. Layer 0 is the embedding output (token + position, ``model.py``);
    rows that never change are marked, since a constant row reads as a finding."""
    measure = a.settings.collapse_measure
    rows = a.collapse_rows.filter((pl.col("trial") == trial) & pl.col("level").is_null()
                                  & pl.col("layer").is_not_null())
    if rows.height == 0:
        raise ValueError(f"no pooled per-layer {measure} rows for {trial}")
    steps = np.sort(rows["step"].unique().to_numpy())
    layers = np.sort(rows["layer"].unique().to_numpy())
    grid = np.full((layers.size, steps.size), np.nan)
    grid[np.searchsorted(layers, rows["layer"].to_numpy()),
         np.searchsorted(steps, rows["step"].to_numpy())] = rows["value"].to_numpy()
    spread = np.nanmax(grid, axis=1) - np.nanmin(grid, axis=1)
    constant = spread <= 1e-9 * max(float(np.nanmax(np.abs(grid))), 1.0)
    fig = Figure(figsize=(9, 0.35 * layers.size + 2.4))
    ax = fig.subplots()
    im = ax.pcolormesh(_edges(steps.astype(float)), np.arange(layers.size + 1) - 0.5, grid,
                       cmap="viridis", shading="flat")
    _step_axis(ax)
    ax.set_xlim(0, _edges(steps.astype(float))[-1])
    names = ["0 embed" if x == 0 else str(x) for x in layers]
    ax.set_yticks(range(layers.size),
                  [f"{n} (constant)" if c else n for n, c in zip(names, constant, strict=True)],
                  fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ev = a.details.filter((pl.col("trial") == trial) & (pl.col("measure") == "accuracy")
                          & pl.col("step").is_not_null())
    if ev.height:
        ax.vlines(ev["step"].to_list(), 0, 1, transform=ax.get_xaxis_transform(),
                  colors="white", linestyles="--", lw=0.8)
        ax.legend(handles=[Line2D([], [], color="white", ls="--", lw=1,
                                  label="accuracy emergence (one per level)")],
                  loc="upper right", fontsize=7, facecolor="0.3", labelcolor="white")
    ax.set_ylabel("layer (0 = embedding, i = after block i)", fontsize=8)
    ax.set_title(f"{trial}: {measure} per layer, levels pooled", fontsize=10)
    fig.colorbar(im, ax=ax).set_label(_measure_label(measure), fontsize=8)
    if constant.any():
        fig.text(0.01, 0.01, "constant: the layer's representation does not vary across "
                 "prompts at the read position (layer 0: same token and position)", fontsize=7)
    fig.tight_layout(rect=(0, 0.04 if constant.any() else 0, 1, 1))
    return _save(fig, path)


def lead_distributions(a: Analysis, path: Path, event: str = "accuracy") -> Path:
    """Lead of each measure in units of its stated tolerance (the ``tolerance`` column of
    the leads table, the same one the text and tables use), measures in hierarchy order,
    n events under each box; the shaded band is +/- one tolerance (synchronous or
    unresolved)."""
    order = a.hierarchy.filter(pl.col("event") == event)["measure"].to_list()
    leads = a.leads.filter((pl.col("event") == event)
                           & pl.col("lead_tolerances").is_not_null())
    data = [leads.filter(pl.col("measure") == m)["lead_tolerances"].to_numpy() for m in order]
    fig = Figure(figsize=(max(6.5, 1.1 * len(order) + 2.5), 4.8))
    ax = fig.subplots()
    ax.axhspan(-1, 1, color="0.88", zorder=0,
               label="|lead| <= 1 tolerance: synchronous or unresolved")
    if order:
        box = ax.boxplot(data, showfliers=False)
        box["medians"][0].set_label("median (box: quartiles, whiskers: 1.5 IQR)")
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=6, alpha=0.5, color="tab:blue",
                       label="one event" if i == 1 else None)
        ax.set_xticks(range(1, len(order) + 1),
                      [f"{m}\nn={d.size}" for m, d in zip(order, data, strict=True)],
                      rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6, label="onset at the event")
    ax.set_xlabel("measure (hierarchy order: earliest median lead first)", fontsize=8)
    ax.set_ylabel("lead / stated tolerance (> 1: precursor, < -1: lagging)", fontsize=8)
    ax.set_title(f"Lead of each measure's onset before the {event} event", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _params_text(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n < 1e7 else \
        f"{n / 1e6:.0f}M"


def _scale_label(scale: str, params: Mapping[str, float]) -> str:
    """``"s0 (0.4M)"``: a scale with its parameter count, where one is known."""
    n = params.get(scale)
    return scale if n is None else f"{scale} ({_params_text(n)})"


def floors_vs_scale(a: Analysis, path: Path, params: Mapping[str, float] | None = None
                    ) -> Path:
    """Collapse floor (median over seeds, bars: min to max) against scale, one line per task
    level (per-level floors are the headline); ``params``: parameter count per scale, shown
    with its name."""
    s = a.floor_summary
    order = a.scale_order
    fig = Figure(figsize=(6.5, 4.2))
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
    ax.set_xticks(range(len(order)), [_scale_label(x, params or {}) for x in order], fontsize=8)
    ax.set_xlabel("scale (parameters)", fontsize=8)
    ax.set_ylabel(f"final-layer floor: {_measure_label(a.settings.collapse_measure)}",
                  fontsize=8)
    ax.set_title("Collapse floor against scale (median over seeds, bars: min to max)",
                 fontsize=10)
    if s.height:
        ax.legend(fontsize=7, ncol=2, title="task level", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def caption(a: Analysis, rel: str) -> str:
    """The one-line caption of the figure file ``rel`` (as the report names it)."""
    stem = Path(rel).stem
    measure = a.settings.collapse_measure
    if stem == "leads":
        return ("Lead of each measure's onset before the accuracy event, in units of its "
                "stated tolerance; one box per measure in hierarchy order, n = events with an "
                "onset; shaded: within one tolerance.")
    if stem == "floors_vs_scale":
        return (f"Final-layer {measure} collapse floor per task level against scale "
                "(parameters in brackets): median over seeds, bars from min to max.")
    kind, _, trial = stem.partition("_")
    if kind == "curves":
        return (f"Trial {trial}: accuracy, normalised log-prob and each measure against "
                "training step, one colour per task level (black: pooled over levels); dashed: "
                "accuracy emergence, dotted: the measure's onset.")
    if kind == "heatmap":
        return (f"Trial {trial}: {measure} of every layer (0 = embedding) against training "
                "step, levels pooled; dashed: accuracy emergence.")
    return stem
