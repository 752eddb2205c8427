"""emergence_core is the science: it never imports the machinery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import emergence_core

FORBIDDEN = {"ray", "mlflow", "typer", "orchestrator"}
ROOT = Path(emergence_core.__file__).parent


def test_no_module_of_emergence_core_imports_the_machinery() -> None:
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_every_module_loads_no_machinery() -> None:
    modules = sorted(
        "emergence_core." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in ROOT.rglob("*.py") if p.name != "__init__.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
