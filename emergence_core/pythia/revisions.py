"""Pythia revisions and model names (docs/methods.md §5).

Every Pythia model publishes 154 training checkpoints as Hugging Face revisions (git
branches): ``step0``, the powers of two ``step1`` ... ``step512``, then ``step1000`` to
``step143000`` every 1000. A sweep selects some of them with

- ``"all"``: all 154, in training order;
- a single name (``"step1000"``) or a range string ``"stepA..stepB"`` (every revision
  with A <= step <= B) or ``"stepA..stepB:K"`` (the steps A, A+K, A+2K, ... <= B, each of
  which must be a revision: what you write is what you get);
- a list whose elements are names or range strings.

The result is always sorted by step, without duplicates. An unknown name fails with a
one-line :class:`RevisionError` that names it and suggests the nearest revisions.

Model names are validated by shape (``org/name``, as the Hub spells repository ids), not
against a closed list, so PolyPythia ``-seedN`` variants, ``-deduped`` models and test
models with Pythia-like names all pass; the ``-seedN`` suffix gives the seed column.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from emergence_core.registry import did_you_mean_of, nearest

__all__ = [
    "REVISIONS",
    "REVISION_STEPS",
    "ModelName",
    "ModelNameError",
    "RevisionError",
    "parse_model_name",
    "parse_revisions",
    "revision_step",
]

REVISION_STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, 143_001, 1000))
REVISIONS: tuple[str, ...] = tuple(f"step{s}" for s in REVISION_STEPS)
_STEP_OF = {name: step for name, step in zip(REVISIONS, REVISION_STEPS, strict=True)}

_STEP_RE = re.compile(r"step(\d+)")
_RANGE_RE = re.compile(r"(?P<start>[^.:]+)\.\.(?P<end>[^.:]+)(?::(?P<stride>[^:]*))?")


class RevisionError(ValueError):
    """A revision name or selection that is not a Pythia checkpoint."""


class ModelNameError(ValueError):
    """A model name that is not a Hub repository id of the form ``org/name``."""


def _suggest(name: str) -> str:
    """Nearest revisions by step number when ``name`` looks like ``stepN``, else by spelling."""
    m = _STEP_RE.fullmatch(name.strip().lower())
    if m:
        step = int(m.group(1))
        i = bisect.bisect_left(REVISION_STEPS, step)
        near = [REVISIONS[j] for j in (i - 1, i) if 0 <= j < len(REVISIONS)]
    else:
        near = nearest(name, REVISIONS, n=2, cutoff=0.6)
    return did_you_mean_of(near, quote=False, prefix="; ")


def revision_step(name: str) -> int:
    """The training step of the Pythia revision ``name`` (``"step1000"`` -> 1000)."""
    if not isinstance(name, str):
        raise RevisionError(f"revision must be a string like 'step1000', got {name!r}")
    step = _STEP_OF.get(name)
    if step is None:
        raise RevisionError(
            f"unknown Pythia revision {name!r}{_suggest(name)} "
            f"(revisions: step0, step1 ... step512 in powers of two, step1000 ... step143000)"
        )
    return step


def _parse_range(text: str) -> list[int]:
    m = _RANGE_RE.fullmatch(text.strip())
    if m is None:
        raise RevisionError(f"revision range {text!r} is not of the form 'stepA..stepB' "
                            f"or 'stepA..stepB:K'")
    start, end = revision_step(m.group("start")), revision_step(m.group("end"))
    if start > end:
        raise RevisionError(f"revision range {text!r} runs backwards: {start} > {end}")
    stride_text = m.group("stride")
    if stride_text is None:
        return [s for s in REVISION_STEPS if start <= s <= end]
    if not stride_text.isdigit() or int(stride_text) <= 0:
        raise RevisionError(f"revision range {text!r}: the stride after ':' must be a "
                            f"positive integer, got {stride_text!r}")
    steps = list(range(start, end + 1, int(stride_text)))
    for s in steps:
        if f"step{s}" not in _STEP_OF:
            raise RevisionError(f"revision range {text!r} includes step{s}, which is not a "
                                f"Pythia revision{_suggest(f'step{s}')}")
    return steps


def _parse_one(text: str) -> list[int]:
    if not isinstance(text, str):
        raise RevisionError(f"a revision must be a string like 'step1000', got {text!r}")
    if ".." in text:
        return _parse_range(text)
    return [revision_step(text.strip())]


def parse_revisions(selection: str | Sequence[str]) -> list[tuple[str, int]]:
    """Resolve a sweep's revision selection to ``[(name, step), ...]`` sorted by step.

    >>> parse_revisions("step0..step4")
    [('step0', 0), ('step1', 1), ('step2', 2), ('step4', 4)]
    >>> parse_revisions(["step2000", "step1000..step3000:1000"])
    [('step1000', 1000), ('step2000', 2000), ('step3000', 3000)]
    """
    if isinstance(selection, str):
        parts = list(REVISIONS) if selection.strip().lower() == "all" else [selection]
    elif isinstance(selection, Sequence):
        parts = list(selection)
    else:
        raise RevisionError(f"revisions must be 'all', a name, a range or a list, "
                            f"got {type(selection).__name__}")
    if not parts:
        raise RevisionError("the revision selection is empty")
    steps = sorted({s for part in parts for s in _parse_one(part)})
    return [(f"step{s}", s) for s in steps]


# --- model names ---------------------------------------------------------------------------

# Hub repository ids: letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"(?P<org>{_REPO_PART})/(?P<repo>{_REPO_PART})")
_PYTHIA_RE = re.compile(
    r"pythia-(?P<size>\d+(?:\.\d+)?[mb])(?P<deduped>-deduped)?(?:-v0)?(?:-seed(?P<seed>\d+))?"
)
_SEED_RE = re.compile(r"-seed(\d+)$")


@dataclass(frozen=True)
class ModelName:
    """A validated model name: ``EleutherAI/pythia-160m-seed3`` -> size '160m', seed 3."""

    name: str
    org: str
    repo: str
    seed: int
    size: str | None  # "160m", "2.8b"; None for names outside the Pythia pattern
    deduped: bool

    @property
    def is_pythia(self) -> bool:
        """Whether the name follows the published Pythia pattern (``pythia-<size>...``)."""
        return self.size is not None


def parse_model_name(name: str) -> ModelName:
    """Validate ``name`` as a Hub repository id and read its seed (``-seedN``, else 0).

    Any ``org/name`` is accepted (a closed list would refuse new PolyPythia seeds and the
    tests' tiny model); the Pythia fields are filled in when the name follows the pattern.
    """
    text = name.strip() if isinstance(name, str) else ""
    m = _REPO_RE.fullmatch(text)
    if not m or "--" in text or ".." in text or len(text) > 96:
        raise ModelNameError(
            f"model name {name!r} is not a Hub repository id like 'EleutherAI/pythia-160m'"
        )
    repo = m.group("repo")
    seed_m = _SEED_RE.search(repo)
    pythia = _PYTHIA_RE.fullmatch(repo)
    return ModelName(
        name=text,
        org=m.group("org"),
        repo=repo,
        seed=int(seed_m.group(1)) if seed_m else 0,
        size=pythia.group("size") if pythia else None,
        deduped=bool(pythia and pythia.group("deduped")),
    )
