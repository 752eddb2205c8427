"""The committed CPU study (studies/cpu-s0) stays readable by the current code: its README's
side-by-side table is what ``claims.py`` reads from the committed CSVs, the tables the analysis
fixes changed are what ``rederive.py`` computes, and ``emerge analyze`` on a tiny slice of the
same sweep file still writes every committed table's columns."""

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
        spec = importlib.util.spec_from_file_location("study_claims", STUDY / "claims.py")
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
        "README.md's tables differ from `python studies/cpu-s0/claims.py --write`"
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
