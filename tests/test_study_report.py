"""The committed CPU study (studies/cpu-s0) stays readable by the current code: its README's
side-by-side table is what ``studies/claims.py`` reads from the committed CSVs, the tables the
analysis fixes changed are what ``rederive.py`` computes, and ``emerge analyze`` on a tiny
slice of the same sweep file still writes every committed table's columns; the scale rows
read planted two-scale tables right."""

from __future__ import annotations

import csv
import importlib.util
import struct
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.sweep.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "cpu-s0"


def _claims():
    if "study_claims" not in sys.modules:  # (dataclasses look their module up there)
        spec = importlib.util.spec_from_file_location("study_claims",
                                                      ROOT / "studies" / "claims.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["study_claims"] = module
        spec.loader.exec_module(module)
    return sys.modules["study_claims"]


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def test_the_readme_table_is_what_the_committed_csvs_say() -> None:
    claims = _claims()
    readme = (STUDY / "README.md").read_text()
    assert claims.refresh(STUDY / "README.md", STUDY / "report") == readme, \
        "README.md's tables differ from `python studies/claims.py studies/cpu-s0 --write`"
    verdicts = [c.verdict for c in claims.claims(STUDY / "report")]
    assert len(verdicts) >= 8 and set(verdicts) <= {"reproduced", "not reproduced",
                                                   "not measurable here"}


def test_the_rederived_tables_are_what_the_current_code_computes() -> None:
    """studies/cpu-s0/rederive.py recomputes the tables the analysis fixes changed from the
    committed intermediates; the committed ones must be its output, byte for byte."""
    import subprocess

    out = subprocess.run([sys.executable, str(STUDY / "rederive.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "stale: none"
    with open(STUDY / "report" / "tables" / "topdown.csv", newline="") as f:
        td = list(csv.DictReader(f))
    assert td and {r["verdict"] for r in td} == {"undetermined"}  # two blocks: no verdict
    assert all(r["layers"].split()[0] != "0" for r in td)  # the embedding never votes
    claims = _claims().claims_table(STUDY / "report")
    assert "(departure rule)" in claims and "(first-change-after-the-floor rule)" in claims


def test_the_readme_states_the_llc_pilots_counts_as_their_csvs_say() -> None:
    """The pilots' counts (after and before the temperature fix) are the script's summary of
    the committed CSVs, word for word; every chosen setting passes all four checks; and the
    grids' CSV holds exactly the points each pilot says it ran."""
    spec = importlib.util.spec_from_file_location("study_pilots", STUDY / "llc_pilots.py")
    pilots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pilots)
    readme = " ".join((STUDY / "README.md").read_text().split())
    for path in (pilots.CSV, *(p for p, _ in pilots.BEFORES)):
        assert pilots.summary(path) in readme, path.name
    with pilots.CSV.open() as f:
        rows = list(csv.DictReader(f))
    assert all(pilots._passes(r) for r in rows if r["chosen"] == "True")
    with pilots.GRIDS.open() as f:
        grids = list(csv.DictReader(f))
    assert {r["trial"]: int(r["points_run"]) for r in rows} \
        == {t: sum(g["trial"] == t for g in grids) for t in {g["trial"] for g in grids}}
    for r in rows:  # the chosen point is in its grid, with the row's value of c and k
        if r["chosen"] == "True":
            assert any(g["trial"] == r["trial"] and g["passed"] == "True"
                       and float(g["step"]) == float(r["c"]) for g in grids), r["trial"]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_each_claim_has_the_multiverse_its_committed_table_gives(tmp_path: Path) -> None:
    """studies/cpu-s0/multiverse is `emerge multiverse`'s output for the re-issued run: every
    claim has its rows, and writing them out again from the committed multiverse.csv gives
    the committed per-claim tables and summary, byte for byte, and figures of the same size
    (a figure's width follows its count of specifications, its height its choices)."""
    import polars as pl

    from emergence_core.multiverse.claims import CLAIMS, SCHEMA
    from emergence_core.multiverse.report import write_multiverse

    committed = STUDY / "multiverse"
    table = pl.read_csv(committed / "multiverse.csv", schema=SCHEMA)
    assert set(table["claim"].unique().to_list()) == {c.key for c in CLAIMS}
    heads = table.filter(pl.col("headline"))["claim"].to_list()
    assert sorted(heads) == sorted(c.key for c in CLAIMS)  # one headline per claim
    written = write_multiverse(table, tmp_path)
    assert sorted(f.name for f in written) == sorted(
        f.name for f in committed.iterdir() if f.suffix in (".csv", ".png", ".md"))
    for fresh in written:
        mine = committed / fresh.name
        if fresh.suffix == ".png":
            assert _png_size(mine) == _png_size(fresh), fresh.name
        else:
            assert mine.read_text() == fresh.read_text(), \
                f"{fresh.name} differs from what the committed multiverse.csv gives"


def test_the_report_names_its_commit_and_command() -> None:
    readme = (STUDY / "README.md").read_text()
    assert "emerge sweep sweeps/cpu-study.yaml" in readme
    assert "emerge analyze" in readme and "commit" in readme
    for rel in ("report/report.md", "report/report.json", "report/tables/rates.csv"):
        assert (STUDY / rel).is_file(), rel


@pytest.mark.slow
def test_a_slice_of_the_study_sweep_gives_the_committed_tables(tmp_path: Path) -> None:
    """One trial of sweeps/cpu-study.yaml, cut to seconds, through `emerge analyze`: every
    committed table keeps its columns, and the claims table reads the fresh report too."""
    from emergence_core.trial.runner import run_trial
    from orchestrator.cli.train import _record

    data = yaml.safe_load((ROOT / "sweeps" / "cpu-study.yaml").read_text())
    data.update(tasks=["MOD"], seeds=[0], run_dir=str(tmp_path / "sweep"))
    data["per_task"] = {"MOD": {"train": {"steps": 40, "batch_size": 24, "train_size": 300}}}
    data["train"].update(diag_size=40)
    data["train"]["probe"].update(n_probes=12, rankme_samples=16)
    data.pop("probes")
    (trial,) = parse_spec(data, "slice").trials()
    run = tmp_path / "run"
    run_trial(trial.config, run)
    _record(run, trial.config)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["analyze", str(run), "--out", str(out), "--no-mlflow",
                                      "--threshold", str(data["emergence"]["threshold"]),
                                      "--persistence", str(data["emergence"]["persistence"])])
    assert result.exit_code == 0, result.output
    committed = sorted([*(STUDY / "report" / "tables").glob("*.csv"),
                        *(STUDY / "reissue" / "tables").glob("*.csv")])
    assert committed
    for path in committed:
        fresh = out / "tables" / path.name
        assert fresh.is_file(), f"the current analyze no longer writes {path.name}"
        if _header(fresh):  # (tables of the expensive measures are empty in a slice run
            # without the probe pool: they have no columns to compare). Readable: every
            # committed column is still written (a table may gain columns)
            missing = [c for c in _header(path) if c not in _header(fresh)]
            assert not missing, f"{path.name}: the current analyze no longer writes {missing}"
    claims = _claims()
    for make in claims.BLOCKS.values():  # each reads the current code's tables
        make(out)


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_the_scale_rows_read_planted_two_scale_tables(tmp_path: Path) -> None:
    """The scale rows on tables as a two-scale run writes them: MOD's floors at s0 and s1 with
    their spread, and the reversal pairs; the verdicts follow from planted intervals."""
    import shutil

    claims = _claims()
    tables = tmp_path / "report" / "tables"
    shutil.copytree(STUDY / "report" / "tables", tables)
    summary = [{"task": "MOD", "level": lv, "scale": sc, "floor": f, "floor_min": f,
                "floor_max": f, "depth": 0.5, "floor_step": 100, "n_seeds": 2, "n_layers": 4}
               for lv, sc, f in ((1, "s0", 2.0), (1, "s1", 2.1), (2, "s0", 2.0),
                                 (2, "s1", 3.6))]
    _write(tables / "floor_summary.csv", summary)

    def spread(l2: tuple[float, float, float]) -> None:
        _write(tables / "floor_spread.csv", [
            {"task": "MOD", "level": 1, "n_scales": 2, "mean_floor": 2.05, "cv": 0.03,
             "max_min_ratio": 1.05, "cv_lo": 0.01, "cv_hi": 0.06, "ci_method": "seed bootstrap"},
            {"task": "MOD", "level": 2, "n_scales": 2, "mean_floor": 2.8, "cv": l2[0],
             "max_min_ratio": 1.8, "cv_lo": l2[1], "cv_hi": l2[2],
             "ci_method": "seed bootstrap"}])

    pred = [{"signal": "onset", "statistic": "reversal", "scope": scope, "n": 4, "k": 1.0,
             "value": 0.25, "p_value": "", "lo": 0.05, "hi": 0.6, "ci_method": "Wilson"}
            for scope in ("s0 vs s1", "all")]
    _write(tables / "prediction.csv", pred)

    def row(start: str):
        return next(c for c in claims.claims(tmp_path / "report") if c.claim.startswith(start))

    spread((0.4, 0.3, 0.5))  # level 2's floor moves with scale: not the same
    scale = row("...and the floors")
    assert scale.verdict == "not reproduced" and scale.interval == (0.3, 0.5)
    assert "L2 2.00 / 3.60 (cv 0.40; 0.30-0.50; ratio 1.80x)" in scale.here
    assert "every task: 1 of 2 levels within 0.10" in scale.here
    spread((0.1, 0.05, 0.2))  # now both levels' intervals reach the study's spread
    assert row("...and the floors").verdict == "reproduced"
    reversal = row("Ordering reversals")
    assert reversal.verdict == "reproduced" and reversal.here.startswith("1/4 (0.25; 0.05-0.60")
    _write(tables / "prediction.csv", [{**r, "n": 0, "k": 0.0} for r in pred])
    assert row("Ordering reversals").here == (
        "0 reversal pair(s): no level's emergence order flips between the scales")
