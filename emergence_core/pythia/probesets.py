"""The seven Pythia probe sets (docs/methods.md §5): data files in a registry.

Each set is a JSON-lines file in ``probesets/`` shipped with the package, one item a line:

- *continuation* sets: ``{"prompt": "The capital of France is", "continuation": " Paris"}``
- *pair* sets (grammar minimal pairs, and logic): ``{"prompt": "The keys to the cabinet",
  "good": " are on the table.", "bad": " is on the table."}``

Logic is a pair set whose two candidates both appear in the prompt (``build_probesets``),
so copying from the prompt cannot score above its chance of 0.5; arithmetic is worded six
ways, so its read position is not one fixed token. Each set's chance rate under its
scoring is ``evaluate.probeset_chance``.

The prompt is what the model reads; its last token is the read position of RankMe (the
analogue of SEP in the trained tasks). Text rules, checked on load, keep tokenisation at
the prompt/continuation boundary the same as in running text: the prompt is non-empty and
does not end in whitespace; a continuation starts with exactly one space followed by
non-space text. Every set has 16 to 200 items and no duplicate item (continuation sets: no
two items share a prompt, since a prompt has one expected continuation).

A set's scoring is declared once, here, with the set (as in lm-evaluation-harness):

- ``exact``: an item is correct when every continuation token is the teacher-forced argmax;
- ``pair``: an item is correct when log p(good | prompt) > log p(bad | prompt);
- ``token``: accuracy is the fraction of continuation tokens, pooled over the set, that are
  the teacher-forced argmax (general text, where the exact match of a free-running
  continuation says more about phrasing than about the model).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from emergence_core.registry import Registry, RegistryError

__all__ = [
    "MAX_ITEMS",
    "MIN_ITEMS",
    "PROBESETS",
    "ProbeItem",
    "ProbeSet",
    "ProbeSetError",
    "ProbeSetSpec",
    "load_probeset",
    "load_probesets",
    "probeset_names",
    "read_probeset_file",
]

MIN_ITEMS, MAX_ITEMS = 16, 200

Kind = Literal["continuation", "pair"]
Scoring = Literal["exact", "pair", "token"]


class ProbeSetError(RegistryError):
    """An unknown probe-set name or a probe-set file that breaks the schema."""


@dataclass(frozen=True)
class ProbeSetSpec:
    """A registry entry: the set's name, item kind, scoring rule and what it probes."""

    name: str
    kind: Kind
    scoring: Scoring
    description: str


@dataclass(frozen=True)
class ProbeItem:
    """One item: the prompt, its expected continuation, and for pairs the bad alternative."""

    prompt: str
    continuation: str  # the expected continuation; for pair sets the grammatical one
    bad: str | None = None  # pair sets only: the ungrammatical continuation


@dataclass(frozen=True)
class ProbeSet:
    """A loaded, validated probe set."""

    spec: ProbeSetSpec
    items: tuple[ProbeItem, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.items)


_SPECS = (
    ProbeSetSpec("grammar", "pair", "pair",
                 "minimal pairs: agreement, tense, anaphora, articles, case, word order"),
    ProbeSetSpec("semantics", "continuation", "exact",
                 "word meaning: antonyms, categories, properties, part-whole"),
    ProbeSetSpec("arithmetic", "continuation", "exact",
                 "one-operation integer arithmetic in six wordings ('a + b =', 'the sum of')"),
    ProbeSetSpec("icl", "continuation", "exact",
                 "in-context learning: repeated sequences, cycles, few-shot mappings"),
    ProbeSetSpec("factual", "continuation", "exact",
                 "factual recall: capitals, people, science, geography, dates"),
    ProbeSetSpec("logic", "pair", "pair",
                 "forced choice between two words both in the prompt (chance 0.5): "
                 "syllogisms, chains, negation, modus ponens, transitive orderings"),
    ProbeSetSpec("general_text", "continuation", "token",
                 "plain English passages and the words that continue them"),
)
PROBESETS: Registry[ProbeSetSpec] = Registry("probe set", {s.name: s for s in _SPECS},
                                              error=ProbeSetError)

_KEYS: dict[Kind, frozenset[str]] = {
    "continuation": frozenset({"prompt", "continuation"}),
    "pair": frozenset({"prompt", "good", "bad"}),
}


def probeset_names() -> tuple[str, ...]:
    """The registered probe-set names, in registry order."""
    return tuple(PROBESETS)


def _spec(name: str) -> ProbeSetSpec:
    return PROBESETS.lookup(name)


def _check_text(where: str, key: str, value: object, *, continuation: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProbeSetError(f"{where}: {key!r} must be a non-empty string")
    if continuation:
        if not value.startswith(" ") or value[1:2].isspace() or not value[1:].strip():
            raise ProbeSetError(f"{where}: {key!r} must start with one space then text, "
                                f"got {value!r}")
    elif value != value.rstrip() or value != value.lstrip():
        raise ProbeSetError(f"{where}: {key!r} must not start or end with whitespace, "
                            f"got {value!r}")
    return value


def _parse_item(where: str, line: str, kind: Kind) -> ProbeItem:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise ProbeSetError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict) or set(raw) != _KEYS[kind]:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ProbeSetError(f"{where}: a {kind} item has exactly the keys "
                            f"{sorted(_KEYS[kind])}, got {got}")
    prompt = _check_text(where, "prompt", raw["prompt"], continuation=False)
    if kind == "continuation":
        return ProbeItem(prompt, _check_text(where, "continuation", raw["continuation"],
                                             continuation=True))
    good = _check_text(where, "good", raw["good"], continuation=True)
    bad = _check_text(where, "bad", raw["bad"], continuation=True)
    if good == bad:
        raise ProbeSetError(f"{where}: 'good' and 'bad' are the same text {good!r}")
    return ProbeItem(prompt, good, bad)


def read_probeset_file(path: str | Path, spec: ProbeSetSpec) -> ProbeSet:
    """Read and validate one JSON-lines file against ``spec``; blank lines are skipped."""
    path = Path(path)
    items: list[ProbeItem] = []
    seen: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        item = _parse_item(where, line, spec.kind)
        key = (item.prompt,) if spec.kind == "continuation" else (item.prompt, item.continuation,
                                                                  item.bad or "")
        if key in seen:
            raise ProbeSetError(f"{where}: duplicates the item on line {seen[key]}")
        seen[key] = lineno
        items.append(item)
    if not MIN_ITEMS <= len(items) <= MAX_ITEMS:
        raise ProbeSetError(f"{path.name}: a probe set has {MIN_ITEMS} to {MAX_ITEMS} items, "
                            f"found {len(items)}")
    return ProbeSet(spec, tuple(items))


def load_probeset(name: str, directory: str | Path | None = None) -> ProbeSet:
    """Load the registered probe set ``name`` from the package data (or ``directory``)."""
    spec = _spec(name)
    if directory is not None:
        return read_probeset_file(Path(directory) / f"{name}.jsonl", spec)
    ref = resources.files("emergence_core.pythia").joinpath("probesets", f"{name}.jsonl")
    with resources.as_file(ref) as path:
        return read_probeset_file(path, spec)


def load_probesets(names: Iterable[str] | None = None) -> tuple[ProbeSet, ...]:
    """Load the named probe sets (all of them when ``names`` is None), in the given order."""
    chosen = probeset_names() if names is None else tuple(names)
    if len(set(chosen)) != len(chosen):
        raise ProbeSetError(f"probe sets named twice: {list(chosen)}")
    if not chosen:
        raise ProbeSetError("no probe sets selected")
    return tuple(load_probeset(n) for n in chosen)
