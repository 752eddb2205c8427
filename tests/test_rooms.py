"""The shape of the code: rooms without cycles, one owner of the run folder, light trials."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emergence_core", "orchestrator")
OWNER = ROOT / "emergence_core" / "run_folder.py"

# The run folder's own names (emergence_core/run_folder.py spells them). What lies inside
# report/ is the report writer's (emergence_core/analysis/report.py), not the run folder's.
SEGMENTS = {"spec.yaml", "sweep.json", "run.json", "tune", "checkpoints", "state.pt", "weights",
            "COMPLETE.json", "metrics", "events", "alerts", "status", "probes", "queue",
            "results", "failed", "workers", "mlflow", "ledger.json", "ledger.lock", "artifacts",
            "mlflow.db", "report", "pythia-failures.json"}
FILE_NAMES = {"spec.yaml", "sweep.json", "run.json", "state.pt", "COMPLETE.json", "ledger.json",
              "mlflow.db", "pythia-failures.json"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST, skip_type_checking: bool) -> Iterator[ast.AST]:
    """Every node below ``node``, leaving out ``if TYPE_CHECKING:`` blocks when asked (they
    never run)."""
    for child in ast.iter_child_nodes(node):
        if skip_type_checking and _type_checking(child):
            continue
        yield child
        yield from _walk(child, skip_type_checking)


def _imports(path: Path, top_level_only: bool, type_checking: bool = True) -> set[str]:
    """The modules ``path`` imports: at module level only, or inside functions too; with or
    without the imports of ``if TYPE_CHECKING:`` blocks (module-level ones never count)."""
    tree = ast.parse(path.read_text())
    if top_level_only:  # `if TYPE_CHECKING:` blocks never run
        nodes = [n for n in tree.body if not _type_checking(n)]
    else:
        nodes = list(_walk(tree, skip_type_checking=not type_checking))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph(top_level_only: bool, key=lambda m: m, type_checking: bool = True
           ) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = {key(d) for d in _imports(path, top_level_only, type_checking) if d in mods}
        graph.setdefault(key(name), set()).update(deps - {key(name)})
    return graph


def test_no_module_import_cycles() -> None:
    """Module-level imports form no cycle (a cycle breaks whichever module loads first)."""
    try:
        tuple(TopologicalSorter(_graph(top_level_only=True)).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_no_cycle_even_through_deferred_imports() -> None:
    """Nor do the imports made inside functions: a deferred import hides a cycle from the
    loader, not from the reader."""
    try:
        tuple(TopologicalSorter(_graph(top_level_only=False, type_checking=False))
              .static_order())
    except CycleError as e:
        pytest.fail(f"import cycle through deferred imports: {' -> '.join(e.args[1])}")


# The data-flow tower, bottom up: a module imports from its own floor and those below, never
# from one above (deferred imports included; ``if TYPE_CHECKING:`` ones are types only). A
# module is on the floor of the longest prefix that names it; every module must have one.
FLOORS: tuple[tuple[str, ...], ...] = (
    # 1. basics: files, errors, names and the rules every stage shares
    ("emergence_core.readers", "emergence_core.errors", "emergence_core.atomic",
     "emergence_core.registry", "emergence_core.metrics", "emergence_core.schedule",
     "emergence_core.emergence_rule", "emergence_core.environment"),
    # 2. the science's parts: tasks, models, configs, measures, Pythia
    ("emergence_core.tasks", "emergence_core.scales", "emergence_core.model",
     "emergence_core.config", "emergence_core.extensions", "emergence_core.measure_settings",
     "emergence_core.measure_registry", "emergence_core.measures",
     "emergence_core.expensive", "emergence_core.pythia"),
    # 3. the run folder: its names, the trial's plan, the stored files
    ("emergence_core.run_folder", "emergence_core.plan", "emergence_core.store",
     "emergence_core.folder_lock", "emergence_core.calibrations",
     "emergence_core.folder_records"),
    # 4. the trial: training, the cheap probes, live alerts, density
    ("emergence_core.trial",),
    # 5. the statistics stage
    ("emergence_core.analysis",),
    # 6. the science's public face and its test fixtures
    ("emergence_core", "emergence_core.testing"),
    # 7-9. the machinery: shared helpers, the rooms, the commands on top
    ("orchestrator.common",),
    ("orchestrator",),
    ("orchestrator.cli",),
)


def _floor(module: str) -> int:
    best = (-1, 0)
    for floor, prefixes in enumerate(FLOORS, start=1):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) \
                    and len(prefix) > best[0]:
                best = (len(prefix), floor)
    return best[1]


def test_every_module_sits_on_a_floor() -> None:
    assert [m for m in _modules() if _floor(m) == 0] == []


def test_no_import_runs_back_up_the_tower() -> None:
    """Data flows up: the trial never asks the statistics, the run folder never asks the trial,
    the science never asks the machinery."""
    up = [f"{m} (floor {_floor(m)}) imports {d} (floor {_floor(d)})"
          for m, deps in sorted(_graph(top_level_only=False, type_checking=False).items())
          for d in sorted(deps) if _floor(d) > _floor(m)]
    assert up == []


def test_the_tower_check_can_fail() -> None:
    """The floors above are read as meant: a runner asking the statistics would be flagged."""
    assert _floor("emergence_core.analysis.emergence") > _floor("emergence_core.trial.runner")
    assert _floor("emergence_core.store") > _floor("emergence_core.readers")
    assert _floor("orchestrator.cli.app") > _floor("orchestrator.sweep.driver") \
        > _floor("orchestrator.common.errors") > _floor("emergence_core")


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "orchestrator" else parts[0]


def test_rooms_depend_one_way_even_through_deferred_imports() -> None:
    """orchestrator's rooms (cli, sweep, probe_pool, pythia, tracking, common) form a DAG, counting
    the imports that commands make inside functions too."""
    graph = {r: {d for d in deps if d.startswith("orchestrator.")}
             for r, deps in _graph(top_level_only=False, key=_room).items()
             if r.startswith("orchestrator.")}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"rooms import each other in a circle: {' -> '.join(e.args[1])}")
    assert set(graph) == {f"orchestrator.{r}" for r in
                          ("cli", "common", "sweep", "probe_pool", "pythia", "tracking")}
    assert not graph["orchestrator.common"]  # shared helpers sit below every room
    assert not any("orchestrator.cli" in deps for deps in graph.values())  # commands on top


def _path_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String pieces joined onto paths with ``/`` and plain strings naming run-folder files."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    found.append((node.lineno, side.value))
                elif isinstance(side, ast.JoinedStr):
                    text = "".join(v.value for v in side.values if isinstance(v, ast.Constant))
                    found.append((node.lineno, text))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and (node.value in FILE_NAMES
                                                  or node.value.endswith(".safetensors"))):
            found.append((node.lineno, node.value))
    return found


def test_only_the_owner_spells_run_folder_names() -> None:
    offenders = []
    for path in _modules().values():
        if path == OWNER:
            continue
        for line, text in _path_literals(ast.parse(path.read_text())):
            segments = set(text.strip("/").split("/"))
            if segments & SEGMENTS or text in FILE_NAMES or text.endswith(".safetensors") \
                    or text.startswith("part-") or text.endswith(".worker.json"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert offenders == []


def test_the_scan_catches_a_path_spelled_by_hand() -> None:
    """The scan above can fail: it flags the ways a layout gets spelled again."""
    code = ('run_dir / "checkpoints" / name / "COMPLETE.json"\n'
            'x = folder / f"{trial}.worker.json"\n'
            'markers = ("sweep.json", "metrics")\n'
            'def f():\n    """Reads sweep.json."""\n')
    texts = {t for _, t in _path_literals(ast.parse(code))}
    assert {"checkpoints", "COMPLETE.json", ".worker.json", "sweep.json"} <= texts
    assert "Reads sweep.json." not in texts


def test_emerge_help_and_a_trial_import_only_what_they_use() -> None:
    """The CLI loads no torch, Ray or MLflow for --help; a trial worker's imports (the Tune
    trainable, the runner) load no dataframe or plotting library."""
    code = ("import sys\n"
            "import orchestrator.cli.app\n"
            "heavy = ('torch', 'ray', 'mlflow', 'polars', 'matplotlib', 'transformers')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "import orchestrator.sweep.tune_run, emergence_core.trial.runner\n"
            "print(sorted(m for m in ('polars', 'matplotlib', 'mlflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout


def test_status_and_sweep_validation_import_no_torch() -> None:
    """``emerge status`` and a sweep file's validation (its tasks, scales and measures' settings)
    load no torch: torch alone takes over a second to import, and ``status`` has 2 s (#26)."""
    code = ("import sys\n"
            "from orchestrator.sweep.spec import load_spec\n"
            "import orchestrator.sweep.views\n"
            "spec = load_spec('sweeps/smoke.yaml')\n"
            "plans = [t.plan.jobs for t in spec.trials()]\n"
            "heavy = ('torch', 'transformers', 'ray', 'mlflow', 'polars', 'matplotlib')\n"
            "print(sorted(m for m in heavy if m in sys.modules), len(plans))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[] 4", out.stdout + out.stderr


def test_importing_any_module_changes_no_environment() -> None:
    modules = sorted(m for m in _modules() if not m.endswith("__main__"))
    # the libraries set some variables of their own when imported: take those first
    libraries = ["ray", "ray.tune", "torch", "transformers",
                 "transformers.models.gpt2.modeling_gpt2", "mlflow", "polars", "matplotlib"]
    code = ("import importlib, os\n"
            f"for m in {libraries!r}: importlib.import_module(m)\n"
            "before = dict(os.environ)\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(set(os.environ.items()) ^ set(before.items())))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
