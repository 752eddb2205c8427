"""The definition multiverse: planted representations whose value is known under each
definition, the headline definition recomputed from kept weights equal to what the trial
logged, and `emerge multiverse` on a real run folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from emergence_core.multiverse.definitions import (
    Definition,
    definition_values,
    grid,
    parse_definition,
)


def _orthonormal_centred(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """[n, k] orthonormal columns with zero means (QR of a centred matrix keeps both)."""
    a = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(a - a.mean(0))[0]


def _erank(spectrum: list[float]) -> float:
    p = np.asarray(spectrum) / np.sum(spectrum)
    return float(np.exp(-(p * np.log(p)).sum()))


def test_planted_representations_have_their_closed_form_under_each_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    d = 24
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    # level 1: the first 100 samples span 2 directions, the next 100 two more, equal energy;
    # a constant offset along a fifth direction, 5x the others' singular value
    first = _orthonormal_centred(100, 2, gen) @ basis[:, :2].T
    second = _orthonormal_centred(100, 2, gen) @ basis[:, 2:4].T
    offset = 5 / math.sqrt(200) * basis[:, 4]  # over 200 rows: a singular value of 5
    z1 = torch.cat([first, second]) + offset
    # level 2: two other directions, all 200 samples
    z2 = _orthonormal_centred(200, 2, gen) @ basis[:, 5:7].T
    layers = {"sep": [[z1.float()], [z2.float()]],
              "all": [[z1.float()[:, None, :]], [z2.float()[:, None, :]]]}
    defs = grid((100, 200), positions=("sep", "all"), readings=("blocks",))
    v = definition_values(layers, 0, defs, levels=[1, 2])

    def at(formula, centre, samples, level, position="sep"):
        return v[Definition(formula, centre, position, "blocks", samples), 0, level]

    # centred, 200 samples of level 1: four directions of singular value 1
    assert at("singular", True, 200, 1) == pytest.approx(4.0, abs=1e-3)
    assert at("covariance", True, 200, 1) == pytest.approx(4.0, abs=1e-3)
    # uncentred: the offset adds a direction 5x stronger (its singular values 5, 1, 1, 1, 1
    # relative), which RankMe weighs by s and the second moment by s^2
    assert at("singular", False, 200, 1) == pytest.approx(_erank([5, 1, 1, 1, 1]), abs=1e-3)
    assert at("covariance", False, 200, 1) == pytest.approx(_erank([25, 1, 1, 1, 1]),
                                                            abs=1e-3)
    # the first 100 samples: only the first two directions (centring removes the offset)
    assert at("singular", True, 100, 1) == pytest.approx(2.0, abs=1e-3)
    # pooled over the levels: the six directions of singular value 1, and the offset, which
    # centring the union leaves as +-1/2 of it on each level's 200 rows: 5 / sqrt(2)
    assert at("singular", True, 200, None) == pytest.approx(_erank([1] * 6 + [5 / 2 ** .5]),
                                                            abs=1e-3)
    assert at("covariance", True, 200, None) == pytest.approx(_erank([1] * 6 + [12.5]),
                                                              abs=1e-3)
    assert at("singular", True, 200, 2) == pytest.approx(2.0, abs=1e-3)
    # "all" with one position per sequence is the same matrix
    for d_ in defs:
        if d_.position == "all":
            same = Definition(d_.formula, d_.centre, "sep", d_.reading, d_.samples)
            for level in (1, 2, None):
                assert v[d_, 0, level] == pytest.approx(v[same, 0, level], abs=1e-9)


def test_reading_points_add_the_final_norm_and_the_logits_as_layers() -> None:
    gen = torch.Generator().manual_seed(1)
    mats = [torch.randn(30, 8, generator=gen) for _ in range(4)] + [torch.randn(30, 13,
                                                                                 generator=gen)]
    layers = {"sep": [mats]}  # 2 blocks: embedding, 2 blocks, ln_f, logits (width 13)
    defs = grid((30,), positions=("sep",), formulas=("singular",), centres=(True,))
    v = definition_values(layers, 2, defs)
    got = {d.reading: sorted({layer for (dd, layer, _) in v if dd == d}) for d in defs}
    assert got == {"blocks": [0, 1, 2], "ln_f": [0, 1, 2, 3], "logits": [0, 1, 2, 3, 4]}
    assert all(level == 1 for (_, _, level) in v)  # one level: no pooled group


def test_definition_names_round_trip_and_a_bad_one_names_the_form() -> None:
    for d in grid((16, 40)):
        assert parse_definition(d.name) == d
    assert Definition("covariance", False, "all", "logits", 40).name == \
        "erank_moment@all:logits:n40"
    with pytest.raises(ValueError, match=r"base@position:reading:n<samples>"):
        parse_definition("rankme@sep")
    with pytest.raises(ValueError, match="position must be one of"):
        Definition("singular", True, "middle", "blocks", 10)


TINY = ["--steps", "24", "--threads", "1", *[f"--set={kv}" for kv in (
    "batch_size=12", "train_size=200", "diag_size=40", "warmup_steps=4", "probe.n_probes=8",
    "probe.rankme_samples=16", "probe.eval_batch_size=64")]]


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    """A tiny MOD trial trained for real by `emerge train`, its weights kept at every probe
    step."""
    from tests.test_analyze_cli import emerge

    run = tmp_path_factory.mktemp("kept") / "run"
    r = emerge("train", "--task", "MOD", "--out", str(run), *TINY,
               "--set", "checkpoint.weights_every=1")
    assert r.exit_code == 0, r.output
    return run


def test_emerge_multiverse_recomputes_the_logged_measures_and_writes_each_claim(
        kept: Path, tmp_path: Path) -> None:
    from emergence_core.analysis import AnalysisSettings, analyze
    from emergence_core.analysis.frames import load_metrics
    from emergence_core.multiverse.claims import CLAIMS
    from tests.test_analyze_cli import emerge

    out = tmp_path / "mv"
    r = emerge("multiverse", str(kept), "--thresholds", "0.5", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "96 definitions at 9 steps" in r.output  # 2 formulas x 2 x 4 positions x 3 x 2
    logged = load_metrics(kept).collect()
    mv = pl.concat([pl.read_parquet(p) for p in (kept / "multiverse").glob("*.parquet")])
    # the study's definitions, recomputed from the kept weights, are what the trial logged
    for measure, name in (("rankme", "rankme@sep:blocks:n16"),
                          ("rankme_uncentred", "rankme_uncentred@sep:blocks:n16")):
        keys = ["trial", "step", "layer", "level"]
        a = logged.filter(pl.col("measure") == measure).select(*keys, "value")
        b = mv.filter(pl.col("measure") == name).select(*keys, "value")
        both = a.join(b, on=keys, how="full", nulls_equal=True)
        assert both.height == a.height == b.height > 0
        assert (both["value"] - both["value_right"]).abs().max() < 1e-9, measure
    table = pl.read_csv(out / "multiverse.csv")
    # one row per specification and no duplicate: floors and top-down do not vary with the
    # threshold or the onset rule, the precursor rate with both
    counts = dict(table.group_by("claim").len().rows())
    assert counts["mod_floor"] == counts["topdown"] == 96 * 2  # x per level, pooled
    assert counts["precursor_hard"] == 96 * 2  # x departure, first
    spec = ["claim", "definition", "scope", "rule", "threshold"]
    assert table.select(spec).unique().height == table.height
    # the headline specification's floor is the report's own
    head = table.filter(pl.col("headline") & (pl.col("claim") == "mod_floor"))
    floors = analyze(logged, AnalysisSettings()).floors.filter(pl.col("task") == "MOD")
    assert head.height == 1 and head["value"][0] == pytest.approx(floors["floor"].median())
    for c in CLAIMS:
        if c.key in counts:
            assert (out / f"{c.key}.csv").is_file()
    assert (out / "mod_floor.png").is_file() and (out / "topdown.png").is_file()
    md = (out / "multiverse.md").read_text()
    assert "| MOD's collapse measure reaches a floor of about 2.0 |" in md
    assert "share reproduced by option: formula covariance" in md
    # an --out holding other files is refused before any work, and nothing is written there
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = emerge("multiverse", str(kept), "--out", str(other))
    assert refused.exit_code == 2 and "holds other files" in refused.output
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # a zero-byte multiverse file is never trusted: it is recomputed
    mv_file = next((kept / "multiverse").glob("*.parquet"))
    kept_bytes = mv_file.read_bytes()
    mv_file.write_bytes(b"")
    healed = emerge("multiverse", str(kept), "--thresholds", "0.5", "--out", str(out))
    assert healed.exit_code == 0 and "96 definitions at 9 steps" in healed.output
    assert pl.read_parquet(mv_file).height == pl.read_parquet(pa.BufferReader(
        kept_bytes)).height
    # a second run reuses the recomputed rows
    again = emerge("multiverse", str(kept), "--thresholds", "0.5", "--out", str(out))
    assert again.exit_code == 0 and "definitions at" not in again.output


def test_trials_recomputed_in_worker_processes_give_the_same_rows(kept: Path,
                                                                 tmp_path: Path) -> None:
    """--workers recomputes each trial in a spawned process with one torch thread: the rows
    and the tables are those of the recompute in the command's own process."""
    import shutil

    from tests.test_analyze_cli import emerge

    here = emerge("multiverse", str(kept), "--thresholds", "0.5", "--out", str(tmp_path / "a"))
    assert here.exit_code == 0, here.output
    copy = tmp_path / "copy"
    shutil.copytree(kept, copy, ignore=shutil.ignore_patterns("multiverse"))
    pooled = emerge("multiverse", str(copy), "--thresholds", "0.5", "--workers", "2",
                    "--out", str(tmp_path / "b"))
    assert pooled.exit_code == 0, pooled.output
    assert "96 definitions at 9 steps" in pooled.output
    (mine,) = (kept / "multiverse").glob("*.parquet")
    keys = ["measure", "step", "layer", "level"]
    a = pl.read_parquet(mine).sort(keys)
    b = pl.read_parquet(copy / "multiverse" / mine.name).sort(keys)
    assert a.height > 0 and a.drop("wall_time").equals(b.drop("wall_time"))
    assert (tmp_path / "a" / "multiverse.csv").read_text() == \
        (tmp_path / "b" / "multiverse.csv").read_text()
    bad = emerge("multiverse", str(copy), "--workers", "0")
    assert bad.exit_code == 2 and "--workers 0: must be at least 1" in bad.output


def test_the_report_carries_the_multiverse_and_summarises_it(kept: Path,
                                                            tmp_path: Path) -> None:
    """`emerge multiverse` writes into RUN_DIR/report/multiverse by default; `emerge analyze`
    replaces the report whole, so it must carry that folder over (not refuse it as files it
    did not write, nor delete it), before and after a report exists, and link it."""
    import shutil

    from tests.test_analyze_cli import emerge

    run = tmp_path / "run"
    shutil.copytree(kept, run, ignore=shutil.ignore_patterns("report"))
    mv = emerge("multiverse", str(run), "--thresholds", "0.5")  # no report yet
    assert mv.exit_code == 0, mv.output
    summary = (run / "report" / "multiverse" / "multiverse.md").read_text()
    for _ in range(2):  # a first report, then one replacing it
        r = emerge("analyze", str(run), "--no-mlflow")
        assert r.exit_code == 0, r.output
        assert (run / "report" / "multiverse" / "multiverse.md").read_text() == summary
        assert (run / "report" / "multiverse" / "mod_floor.png").is_file()
        md = (run / "report" / "report.md").read_text()
        assert "## Definition multiverse" in md and "(multiverse/multiverse.md)" in md
        assert "| MOD's collapse measure reaches a floor of about 2.0 |" in md
    # a foreign file beside it is still refused, and nothing is lost
    (run / "report" / "mine.txt").write_text("mine")
    refused = emerge("analyze", str(run), "--no-mlflow")
    assert refused.exit_code == 2 and "mine.txt" in refused.output
    assert (run / "report" / "multiverse" / "multiverse.md").read_text() == summary


def test_a_run_without_kept_weights_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.test_analyze_cli import emerge

    r = emerge("train", "--task", "MOD", "--out", str(tmp_path / "run"), *TINY,
               "--set", "checkpoint.weights_every=null")
    assert r.exit_code == 0, r.output
    r = emerge("multiverse", str(tmp_path / "run"))
    assert r.exit_code == 2
    assert "no trial has kept weights or multiverse rows" in r.output
    assert "Traceback" not in r.output
