"""The documentation: the site builds strictly, the README stays short, and no docstring or
comment cites a file the repository does not ship (the spec it cites is docs/methods.md)."""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("orchestrator", "emergence_core", "benchmarks", "studies")
METHODS = ROOT / "docs" / "methods.md"

# Files outside the repository that the code once cited: the spec, design and style notes.
FOREIGN = re.compile(r"\b(?:SPEC|DESIGN|STYLE|TRAPS)\.md\b")
# "SPEC section 4", "SPEC 3.4", "SPEC's default", "SPEC names", "SPEC defaults": the spec by
# name. The argument metavar (``emerge sweep SPEC``) and RunFolder.SPEC are not citations.
SPEC_CITED = re.compile(r"\bSPEC(?:'s\b|\s+(?:sections?\b|§|\d|names\b|is\b|defaults?\b))")
MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
METHODS_SECTION = re.compile(r"docs/methods\.md\s*§\s*(\d+(?:\.\d+)?)")
# Files emerge writes (not citations of the repository's files).
WRITTEN = {"report.md", "multiverse.md"}  # files the commands write


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and every docstring (any bare string statement)."""
    source = path.read_text()
    found = [(tok.start[0], tok.string)
             for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            found.append((node.lineno, node.value.value))
    return found


def methods_sections() -> set[str]:
    """Section numbers of docs/methods.md: '## 3. The measures' -> '3', '### 3.4 ...' -> '3.4'."""
    return set(re.findall(r"^#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", METHODS.read_text(), re.M))


def citation_problems(path: Path, text: str, sections: set[str]) -> list[str]:
    problems = []
    for m in FOREIGN.finditer(text):
        problems.append(f"cites {m.group(0)}, which the repository does not ship")
    for m in SPEC_CITED.finditer(text):
        problems.append(f"cites the spec as {m.group(0)!r}: cite docs/methods.md §N")
    for m in MD_PATH.finditer(text):
        name = m.group(1)
        if name in WRITTEN or FOREIGN.fullmatch(name):
            continue
        here = path.parent
        candidates = [ROOT / name, *(d / name for d in (here, *here.parents) if ROOT in d.parents)]
        if not any(c.is_file() for c in candidates):
            problems.append(f"names {name}, which does not exist")
    for m in METHODS_SECTION.finditer(text):
        if m.group(1) not in sections:
            problems.append(f"cites docs/methods.md §{m.group(1)}, which has no such section")
    return problems


def scan(roots: tuple[str, ...] = SCANNED) -> list[str]:
    sections = methods_sections()
    out = []
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            for line, text in comments_and_docstrings(path):
                for problem in citation_problems(path, text, sections):
                    out.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    return out


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    # the command reference is generated from the app: every command is on the page
    for command in ("train", "sweep", "resume", "status", "sync-mlflow", "pythia", "analyze",
                    "probe"):
        assert f"emerge {command}" in cli, command
    run_folder = (tmp_path / "site" / "run-folder" / "index.html").read_text()
    assert "checkpoints/&lt;trial&gt;/weights" in run_folder  # the module docstring's layout


def test_the_readme_is_short_and_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[dev,reference]"' in ci
    assert ("pip install torch==2.13.0 && pip install -e . && emerge sweep sweeps/smoke.yaml"
            in readme)
    assert ('pip install torch==2.13.0 && pip install -e ".[dev,reference]" && python -m pytest'
            in readme)


def test_the_readme_links_only_to_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme)
               if "://" not in t]
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_no_docstring_or_comment_cites_a_file_the_repository_lacks() -> None:
    assert scan() == []


@pytest.mark.parametrize("text,bad", [
    ("the rule of SPEC section 4", True),
    ("(SPEC 3.4)", True),
    ("Each field carries SPEC's default", True),
    ("see DESIGN.md", True),
    ("stated in docs/nowhere.md", True),
    ("docs/methods.md §9", True),
    ("the rule of docs/methods.md §4", False),
    ("(docs/methods.md §3.4)", False),
    ("Run the grid of SPEC as Ray Tune trials", False),
    ("``emerge pythia SPEC``: the command", False),
    ("figures are in BENCHMARKS.md", False),
])
def test_the_scan_tells_a_citation_from_a_name(text: str, bad: bool) -> None:
    path = ROOT / "emergence_core" / "example.py"
    assert bool(citation_problems(path, text, methods_sections())) is bad
