"""The report: files, planted numbers in the Markdown, partial and empty data, atomicity."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, empty_metrics, write_report
from emergence_core.metrics import Measure
from emergence_core.testing import SyntheticConfig, generate

SETTINGS = AnalysisSettings(max_trial_figures=2, n_bootstrap=200)


@pytest.fixture(scope="module")
def planted():
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), scales=(("s0", 2), ("s1", 4)), seeds=(0, 1),
                          positions=("sep",), expensive=(Measure.LLC, Measure.FISHER_ERANK))
    return generate(cfg)


def test_report_on_planted_data_states_the_planted_numbers(planted, tmp_path) -> None:
    df, _ = planted
    s = write_report(df.lazy(), tmp_path / "report", SETTINGS)
    md = (tmp_path / "report" / "report.md").read_text()
    for rel in s.files:
        assert (tmp_path / "report" / rel).is_file(), rel
    assert "figures/leads.png" in s.files and "figures/floors_vs_scale.png" in s.files
    assert sum(f.startswith("figures/curves_") for f in s.files) == 2
    # planted: 8 trials x 3 levels, all emerge; RankMe leads by 6 probes, LLC lags by 12,
    # the linear probe is synchronous; every layer order top-down (s1's four blocks; s0's
    # two cannot say); 2 seeds -> a CI
    assert "accuracy: 24/24 (trial, level) series emerge" in md
    assert "rankme is a precursor in 24/24 events (100%, 95% CI 86-100%)" in md
    assert "llc is a precursor in 0/24 events (0%, 95% CI 0-14%)" in md
    assert "lagging in 24/24 events (100%)" in md
    assert "linear_probe is a precursor in 0/24 events" in md
    assert "synchronous in 24/24 events (100%)" in md
    assert "Top-down: 2/2 (task, scale) combinations with a verdict are top-down" in md
    assert "2 of 4 undetermined" in md
    assert "Per-trial figures drawn for 2/8 trials (max_trial_figures = 2)" in md
    assert "- Nothing: every expected table could be computed." not in md  # 3 measures absent
    assert "hessian_lambda_max" in md and "absent from the whole table" in md
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["headline"]["topdown/count"] == 2.0
    assert summary["headline"]["topdown/undetermined"] == 2.0
    assert s.headline["precursor_rate/rankme"] == 1.0
    assert s.headline["events/accuracy/emerged"] == 24.0
    rates = pl.read_csv(tmp_path / "report" / "tables" / "rates.csv")
    assert rates.filter((pl.col("measure") == "llc") & (pl.col("split_kind") == "all")
                        & (pl.col("event") == "accuracy"))["lagging_k"][0] == 24
    # issue 11: chance rates, both onset rules, the stated tolerance, the same-grid control,
    # the variants table and an interval (and its method) on every rate
    assert "chance-corrected accuracy (accuracy - chance) / (1 - chance)" in md
    assert "Chance per task level" in md and "| COPY | 1 | 0.1 |" in md
    assert "Onset rules side by side" in md and "Variant: the change point nearest" in md
    assert "tolerance 13 to 88 steps" in md  # rankme: stated per event, in steps
    assert "Same-grid control" in md
    assert "## Robustness: how RankMe is measured" in md
    assert "| rankme / per level |" in md and "| rankme_uncentred / pooled |" in md
    assert "(wilson)" in md  # two seeds, fewer than bootstrap_min_seeds
    assert "CI 100-100%" not in md and "CI 0-0%" not in md
    assert "2/2 (task, scale) combinations with a verdict are top-down (95% CI" in md
    assert "Only layers that collapse vote: 2 to 4 per combination" in md
    assert "A verdict needs 3 voting layers, else it is undetermined." in md
    for name in ("chances", "variants", "rule_agreement", "grid_summary", "rates_nearest",
                 "rates_first", "hierarchy_first"):
        assert f"tables/{name}.csv" in s.files
    leads = pl.read_csv(tmp_path / "report" / "tables" / "leads.csv")
    assert {"tolerance", "class", "class_nearest", "onset_nearest", "onset_first",
            "class_first", "rules_agree_first"} <= set(leads.columns)
    # planted: RankMe leaves its floor 6 probes before each event and stays; both rules
    # find that one change point
    assert "| rankme | 24 | 24 | 24 | 24 |" in md


def test_the_report_leads_with_its_answers_and_has_a_self_contained_page(planted,
                                                                        tmp_path) -> None:
    """report.md: the summary table of claims right after the title's line; report.html: the
    same report with every figure embedded, nothing read from beside it."""
    import base64

    df, _ = planted
    s = write_report(df.lazy(), tmp_path / "report", SETTINGS)
    md = (tmp_path / "report" / "report.md").read_text()
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections[0] == "Summary"
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "| claim | result | interval | rule |" in summary
    assert "| Capabilities emerge (accuracy events) | 24/24 (trial, level) series |" in summary
    assert "| Collapse runs top-down | 2/2 (task, scale) with a verdict; 2 undetermined |" \
        in summary
    assert ("| rankme changes before emergence (precursor of accuracy events) | 24/24 under "
            "departure; 24/24 under first") in summary
    assert "report.html" in s.files
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert 'src="figures/' not in page  # every figure embedded
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    drawn = [f for f in s.files if f.endswith(".png")]
    assert len(embedded) == len(drawn) >= 4
    assert base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_an_empty_table_says_so(tmp_path) -> None:
    s = write_report(empty_metrics(), tmp_path / "r", SETTINGS)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "The metrics table is empty" in md
    assert "0 metric rows, 0 trials" in md
    assert (tmp_path / "r" / "tables" / "events.csv").is_file()
    assert s.headline["rows"] == 0.0


def test_report_on_unreadable_metrics_is_a_report_not_a_traceback(tmp_path) -> None:
    s = write_report(pl.scan_parquet(str(tmp_path / "none" / "**" / "*.parquet")),
                     tmp_path / "r", SETTINGS)
    assert any("could not be read" in m for m in s.missing)
    assert "could not be read" in (tmp_path / "r" / "report.md").read_text()


def test_report_missing_whole_measures_lists_them(planted, tmp_path) -> None:
    df, _ = planted
    partial = df.filter(~pl.col("measure").is_in([Measure.RANKME, Measure.LOGPROB]))
    write_report(partial, tmp_path / "r", SETTINGS)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Measures absent from the whole table: rankme" in md
    assert "8/8 trials have no rankme rows" in md
    assert "No logprob_norm series: no logprob_norm events." in md
    assert "0 (trial, level) series have a floor." in md
    assert "rankme_uncentred is a precursor in 24/24 events" in md
    assert ".png not drawn: ValueError: no pooled per-layer rankme rows for" in md


def test_a_new_report_replaces_the_old_one_whole(planted, tmp_path) -> None:
    df, _ = planted
    out = tmp_path / "report"
    write_report(empty_metrics(), out, SETTINGS)
    old = {p for p in out.rglob("*") if p.is_file()}
    write_report(df.filter(pl.col("trial").str.starts_with("COPY-s0")), out, SETTINGS)
    assert "4 trials" not in (out / "report.md").read_text()
    listed = set(json.loads((out / "report.json").read_text())["contents"])
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == listed
    assert old  # an earlier report of its own is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp folders left


def test_a_report_never_replaces_what_it_did_not_write(planted, tmp_path) -> None:
    from emergence_core.analysis import ReportTargetError

    out = tmp_path / "report"
    write_report(empty_metrics(), out, SETTINGS)
    (out / "mine.txt").write_text("a user's file")  # beside an earlier report
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "code.py").write_text("x = 1")
    (tmp_path / "out.txt").write_text("a file")
    for target, says in ((out, "files it did not write (mine.txt)"),
                         (foreign, "not an emerge report (sub/code.py)"),
                         (tmp_path / "out.txt", "is an existing file")):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        with pytest.raises(ReportTargetError, match=re.escape(says)):
            write_report(empty_metrics(), target, SETTINGS)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no renames


@pytest.fixture(scope="module")
def drawn(planted, tmp_path_factory):
    """The report on the planted data, with every figure's matplotlib ``Figure`` kept
    (by file name) for inspection."""
    from emergence_core.analysis import figures

    kept = {}
    save = figures._save

    def keep(fig, path):
        kept[path.name] = fig
        return save(fig, path)

    out = tmp_path_factory.mktemp("drawn") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "_save", keep)
        s = write_report(planted[0].lazy(), out, SETTINGS,
                         scale_params={"s0": 0.405e6, "s1": 3.2e6})
    return s, kept


def _legend(fig) -> set[str]:
    return {t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()}


def test_every_figure_is_a_150_dpi_png(drawn) -> None:
    from PIL import Image

    s, kept = drawn
    pngs = [f for f in s.files if f.endswith(".png")]
    assert len(pngs) == 6 and set(kept) == {f.removeprefix("figures/") for f in pngs}
    for rel in pngs:
        with Image.open(s.out_dir / rel) as im:
            assert min(im.info["dpi"]) >= 149.5, rel
    with Image.open(s.out_dir / "figures" / "leads.png") as im:
        assert im.size[0] >= 900  # was 450 x 360 at 90 dpi


def test_curves_name_every_line_and_label_every_axis(drawn) -> None:
    _, kept = drawn
    fig = next(f for name, f in kept.items() if name.startswith("curves_"))
    # three levels and the pooled series, the two marks and the chance line
    assert {"level 1", "level 2", "level 3", "pooled over levels", "accuracy emergence step",
            "onset of the measure's change", "chance accuracy (constant answer)"
            } <= _legend(fig)
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 7  # accuracy, logprob_norm, 5 measures: no empty frame
    for ax in panels:
        assert ax.lines or ax.collections, ax.get_title()
        assert ax.get_xlabel() == "training step (symlog axis)" and ax.get_ylabel()
        assert ax.get_xscale() == "symlog"
    assert "RankMe effective rank (dims)" in {ax.get_ylabel() for ax in panels}


def test_heatmap_has_the_curves_step_axis_a_labelled_colourbar_and_says_what_layer_0_is(
        drawn) -> None:
    _, kept = drawn
    fig = next(f for name, f in kept.items() if name.startswith("heatmap_"))
    ax, bar = fig.axes
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "training step (symlog axis)"
    assert ax.get_xlim()[1] > 1000  # steps, not probe indices
    assert bar.get_ylabel() == "RankMe effective rank (dims)"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[0] == "0 embed (constant)" and ticks[1] == "1"  # the planted layer 0 is flat
    assert "layer 0: same token and position" in " ".join(t.get_text() for t in fig.texts)
    assert "accuracy emergence (one per level)" in _legend(fig)


def test_leads_figure_labels_the_band_and_counts_each_box(drawn) -> None:
    s, kept = drawn
    fig = kept["leads.png"]
    ax = fig.axes[0]
    assert "|lead| <= 1 tolerance: synchronous or unresolved" in _legend(fig)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks and all(t.endswith("\nn=24") for t in ticks)
    # one order everywhere: the figure's, the hierarchy table's (by lead in probe
    # intervals) and the report's sentence
    hier = s.analysis.hierarchy.filter(pl.col("event") == "accuracy")
    order = [t.split("\n")[0] for t in ticks]
    assert order == hier["measure"].to_list()
    assert hier["median_lead_intervals"].to_list() == sorted(
        hier["median_lead_intervals"].to_list(), reverse=True)
    md = (s.out_dir / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Geometric hierarchy"))
    assert [p.split(" (")[0] for p in line.split(": ", 1)[1].split(" > ")] == order


def test_floors_figure_names_scales_with_their_parameter_counts(drawn) -> None:
    _, kept = drawn
    ax = kept["floors_vs_scale.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s0 (0.4M)", "s1 (3.2M)"]
    assert ax.get_ylabel() and ax.get_xlabel()


def test_report_embeds_every_figure_with_a_caption(drawn) -> None:
    s, _ = drawn
    lines = (s.out_dir / "report.md").read_text().splitlines()
    for rel in (f for f in s.files if f.endswith(".png")):
        i = next(i for i, x in enumerate(lines) if x.startswith("![") and x.endswith(f"]({rel})"))
        assert lines[i + 1].startswith("*") and len(lines[i + 1]) > 40, rel
    assert not any(x.startswith("- [figures/") for x in lines)  # no bare links


def test_a_curves_panel_without_rows_says_so(planted, tmp_path, monkeypatch) -> None:
    from emergence_core.analysis import analyze, figures

    df, _ = planted
    trial = df["trial"][0]
    a = analyze(df.filter((pl.col("trial") == trial) & (pl.col("measure") != Measure.LOGPROB)),
                SETTINGS)
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig) or path)
    figures.trial_curves(a, trial, tmp_path / "c.png")
    panel = next(ax for ax in kept[0].axes if ax.get_title() == "logprob_norm")
    assert [t.get_text() for t in panel.texts] == ["no logprob_norm rows in this trial"]


def test_sparse_series_are_drawn_with_a_marker_at_each_value() -> None:
    """An expensive measure's few checkpoints get markers (joined by lines alone they read
    as a measured curve); a dense cheap series is a plain line."""
    from matplotlib.figure import Figure

    from emergence_core.analysis import figures

    fig = Figure()
    ax_sparse, ax_dense = fig.subplots(1, 2)
    def rows(n: int) -> pl.DataFrame:
        return pl.DataFrame({"step": list(range(0, 10 * n, 10)), "value": [1.0] * n,
                             "level": [None] * n, "layer": [None] * n},
                            schema={"step": pl.Int64, "value": pl.Float64, "level": pl.Int8,
                                    "layer": pl.Int16})
    figures._draw(ax_sparse, "llc", rows(12), [None], [], [])
    figures._draw(ax_dense, "rankme", rows(200), [None], [], [])
    assert ax_sparse.lines[0].get_marker() == "o"
    assert ax_dense.lines[0].get_marker() in (None, "None", "")
