"""The eight algorithmic tasks of the study (docs/methods.md §1), declared as data.

Numbers are written most-significant digit first and zero-padded to a fixed width, so
every level has one prompt length and one answer length (ADD's answer has n + 1 digits,
MUL's n + m). Each decoder is vectorised: indices in, symbol arrays out.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emergence_core.registry import Registry
from emergence_core.tasks.base import LevelSpec, TaskDef, TaskError, Vocabulary

__all__ = ["TASKS", "get_task", "register_task", "task_names", "trial_layout"]

_MAX_UNIVERSE = 2**62  # indices are int64


def _digits(x: np.ndarray, n: int, base: int = 10) -> np.ndarray:
    """[k] non-negative ints -> [k, n] base-``base`` digits, most significant first."""
    powers = base ** np.arange(n - 1, -1, -1, dtype=np.int64)
    return (x[:, None] // powers) % base


def _check_universe(name: str, size: int) -> None:
    if size > _MAX_UNIVERSE:
        raise TaskError(f"{name}: parameters give {size:.3g} distinct problems, more than the "
                        f"2^62 an int64 index can hold; use a shorter length or smaller base")


# COPY and REV: a sequence over an alphabet -------------------------------------------------

def _seq_universe(p: Mapping[str, Any]) -> int:
    return int(p["alphabet"]) ** int(p["length"])


def _seq_validate(name: str):
    def check(p: Mapping[str, Any]) -> None:
        if p["alphabet"] < 2:
            raise TaskError(f"{name}: alphabet must be at least 2, got {p['alphabet']}")
        _check_universe(name, _seq_universe(p))
    return check


def _alphabet_symbols(params: list[Mapping[str, Any]]) -> list[str]:
    k = max(p["alphabet"] for p in params)
    return list(string.ascii_lowercase[:k]) if k <= 26 else [f"s{i}" for i in range(k)]


def _copy_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _digits(idx, p["length"], p["alphabet"])
    return x, x.copy()


def _rev_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _digits(idx, p["length"], p["alphabet"])
    return x, x[:, ::-1].copy()


# SORT: digits, sorted ascending -------------------------------------------------------------

def _sort_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _digits(idx, p["length"])
    return x, np.sort(x, axis=1)


# PAR: bits, their parity --------------------------------------------------------------------

def _par_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _digits(idx, p["length"], 2)
    return x, (x.sum(axis=1, keepdims=True) % 2)


# Two-operand arithmetic on digit strings: symbols 0-9 are digits, 10 the operator --------

_OP = 10


def _operands(idx: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    return idx // 10**m, idx % 10**m


def _two_numbers(a: np.ndarray, n: int, b: np.ndarray, m: int, op: int) -> np.ndarray:
    return np.concatenate([_digits(a, n), np.full((a.size, 1), op), _digits(b, m)], axis=1)


def _add_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = p["n"]
    a, b = _operands(idx, n)
    return _two_numbers(a, n, b, n, _OP), _digits(a + b, n + 1)


def _mul_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, m = p["n"], p["m"]
    a, b = _operands(idx, m)
    return _two_numbers(a, n, b, m, _OP), _digits(a * b, n + m)


# CMP: symbols 0-9 digits, 10 ',', 11 '<', 12 '=', 13 '>' -----------------------------------

def _cmp_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = p["n"]
    a, b = _operands(idx, n)
    return _two_numbers(a, n, b, n, _OP), (12 + np.sign(a - b))[:, None]


def _cmp_sample(p: Mapping[str, Any], rng: np.random.Generator, k: int) -> np.ndarray:
    """Pairs whose shared leading-digit prefix has a length uniform in 0..n.

    Uniform pairs would be decided by the first digit 90% of the time and almost never
    equal; drawing the prefix length first makes every digit position matter and gives
    '=' a share of 1/(n+1).
    """
    n = p["n"]
    a = rng.integers(0, 10, size=(k, n))
    b = rng.integers(0, 10, size=(k, n))
    shared = rng.integers(0, n + 1, size=k)  # length of the common prefix
    pos = np.arange(n)[None, :]
    b = np.where(pos < shared[:, None], a, b)
    # at the first differing position, force a different digit
    differ = pos == shared[:, None]
    b = np.where(differ, (a + rng.integers(1, 10, size=(k, n))) % 10, b)
    powers = 10 ** np.arange(n - 1, -1, -1, dtype=np.int64)
    return (a @ powers) * 10**n + (b @ powers)


def _cmp_strata(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, int]:
    """Length of the shared leading-digit prefix of each pair (n: the numbers are equal)."""
    n = p["n"]
    a, b = _operands(idx, n)
    same = _digits(a, n) == _digits(b, n)  # [k, n]
    # index of the first differing digit, n where none differs
    return np.where(same.all(axis=1), n, np.argmin(same, axis=1)), n + 1


# MOD: symbol 0 is '+', symbol 1 + i is the number i -------------------------------------

def _mod_decode(p: Mapping[str, Any], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = p["p"]
    a, b = idx // q, idx % q
    prompt = np.stack([a + 1, np.zeros_like(a), b + 1], axis=1)
    return prompt, ((a + b) % q + 1)[:, None]


def _mod_symbols(params: list[Mapping[str, Any]]) -> list[str]:
    return ["+"] + [str(i) for i in range(max(p["p"] for p in params))]


def _mod_validate(p: Mapping[str, Any]) -> None:
    if p["p"] < 2:
        raise TaskError(f"MOD: p must be at least 2, got {p['p']}")


def _digit_validate(name: str, *keys: str):
    def check(p: Mapping[str, Any]) -> None:
        if sum(p[k] for k in keys) > 18:
            raise TaskError(f"{name}: at most 18 digits in all fit an int64 index, got "
                            + " + ".join(f"{k}={p[k]}" for k in keys))
    return check


_DIGITS = [str(d) for d in range(10)]

TASKS: Registry[TaskDef] = Registry("task", {
    t.name: t
    for t in (
        TaskDef(
            name="COPY", description="the input sequence of symbols, unchanged",
            defaults=({"length": 4, "alphabet": 10}, {"length": 8, "alphabet": 10},
                      {"length": 16, "alphabet": 10}),
            shape=lambda p: (p["length"], p["length"]), universe=_seq_universe,
            decode=_copy_decode, symbols=_alphabet_symbols, validate=_seq_validate("COPY"),
            steps=600,
        ),
        TaskDef(
            name="REV", description="the input sequence reversed",
            defaults=({"length": 4, "alphabet": 10}, {"length": 8, "alphabet": 10},
                      {"length": 16, "alphabet": 10}),
            shape=lambda p: (p["length"], p["length"]), universe=_seq_universe,
            decode=_rev_decode, symbols=_alphabet_symbols, validate=_seq_validate("REV"),
            steps=600,
        ),
        TaskDef(
            name="CMP", description="'<', '=' or '>' comparing two n-digit numbers",
            defaults=({"n": 2}, {"n": 4}, {"n": 8}),
            shape=lambda p: (2 * p["n"] + 1, 1), universe=lambda p: 10 ** (2 * p["n"]),
            decode=_cmp_decode, sample=_cmp_sample, strata=_cmp_strata,
            symbols=lambda ps: [*_DIGITS, ",", "<", "=", ">"],
            validate=_digit_validate("CMP", "n", "n"),
        ),
        TaskDef(
            name="PAR", description="parity (0/1) of a bit string",
            defaults=({"length": 8}, {"length": 16}, {"length": 32}),
            shape=lambda p: (p["length"], 1), universe=lambda p: 2 ** p["length"],
            decode=_par_decode, symbols=lambda ps: ["0", "1"],
            validate=lambda p: _check_universe("PAR", 2 ** p["length"]),
            steps=3000,
        ),
        TaskDef(
            name="ADD", description="sum of two n-digit numbers",
            defaults=({"n": 2}, {"n": 4}, {"n": 8}),
            shape=lambda p: (2 * p["n"] + 1, p["n"] + 1), universe=lambda p: 10 ** (2 * p["n"]),
            decode=_add_decode, symbols=lambda ps: [*_DIGITS, "+"],
            validate=_digit_validate("ADD", "n", "n"),
        ),
        TaskDef(
            name="MOD", description="(a + b) mod p, a and b single tokens in 0..p-1",
            defaults=({"p": 23}, {"p": 59}, {"p": 113}),
            shape=lambda p: (3, 1), universe=lambda p: p["p"] ** 2,
            decode=_mod_decode, symbols=_mod_symbols, validate=_mod_validate,
            train_fraction=0.4,
        ),
        TaskDef(
            name="SORT", description="the input digits sorted ascending",
            defaults=({"length": 4}, {"length": 8}, {"length": 16}),
            shape=lambda p: (p["length"], p["length"]), universe=lambda p: 10 ** p["length"],
            decode=_sort_decode, symbols=lambda ps: list(_DIGITS),
            validate=_digit_validate("SORT", "length"),
        ),
        TaskDef(
            name="MUL", description="product of an n-digit and an m-digit number",
            defaults=({"n": 2, "m": 1}, {"n": 2, "m": 2}, {"n": 3, "m": 3}),
            shape=lambda p: (p["n"] + p["m"] + 1, p["n"] + p["m"]),
            universe=lambda p: 10 ** (p["n"] + p["m"]),
            decode=_mul_decode, symbols=lambda ps: [*_DIGITS, "*"],
            validate=_digit_validate("MUL", "n", "m"),
            steps=2000,
        ),
    )
}, key=str.upper, same=lambda a, b: a is b, error=TaskError)


def register_task(task: TaskDef) -> TaskDef:
    """Add a task (a plugin module's); the same one again is a no-op, another of the same
    name a TaskError."""
    if task.name.upper() != task.name:
        raise TaskError(f"task {task.name!r}: names are upper case (they name trials)")
    return TASKS.register(task.name, task)


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> TaskDef:
    """The task called ``name`` (case-insensitive), or a TaskError with a suggestion."""
    return TASKS.lookup(name)


def trial_layout(task: str, levels: Sequence[int],
                 level_params: Mapping[int, Mapping[str, Any]] | None = None
                 ) -> tuple[list[LevelSpec], Vocabulary]:
    """The level specs and the vocabulary of a trial, without drawing any data."""
    tdef = get_task(task)
    if not levels:
        raise TaskError("a trial needs at least one level")
    bad = [lv for lv in levels if lv not in (1, 2, 3)]
    if bad:
        raise TaskError(f"unknown level {bad[0]!r} of task {tdef.name}; levels are 1, 2, 3")
    params = level_params or {}
    specs = [tdef.level(lv, **params.get(lv, {})) for lv in sorted(set(levels))]
    return specs, Vocabulary(tuple(tdef.symbols([dict(s.params) for s in specs])))
