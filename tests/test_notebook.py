"""notebooks/analysis.ipynb runs top to bottom on a real (tiny) run folder and draws figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_analyze_cli import train_tiny

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_and_draws_inline(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    trials = train_tiny(tmp_path / "run")
    monkeypatch.setenv("EMERGE_RUN_DIR", str(tmp_path / "run"))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is the kernel ipykernel installs into the venv; jupyter_client starts it
    # with this interpreter (sys.executable), so it needs no `ipykernel install`.
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{len(trials)} trials" in text and "not drawn" not in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2 + 2 * len(trials)  # leads, floors, then curves + heatmap per trial
