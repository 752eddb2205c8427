"""How the logic and arithmetic probe sets are built (``python -m
emergence_core.pythia.build_probesets`` rewrites ``probesets/{logic,arithmetic}.jsonl``).

Logic is a forced choice (a pair set, chance 0.5): the expected continuation and the
alternative *both* appear in the prompt, the expected one first in half of the items and
last in the other half, so copying a word from the prompt, or the first or the most recent
candidate, scores exactly chance; only the inference picks the right one. Families: a
syllogism with a distracting premise, a two-step chain with a distracting premise, a
negation beside an affirmation, modus ponens between two conditionals, and the extreme of
a transitive ordering (the middle term is never a candidate).

Arithmetic varies its wording: six templates (symbols, words, question forms, "the sum
of"), so that the read position (the prompt's last token) is not one fixed token, whose
embedding would be the same in every item.
"""

from __future__ import annotations

import json
from itertools import cycle
from pathlib import Path

__all__ = ["arithmetic_items", "logic_items", "write"]

_NONCE = ["wug", "dax", "blicket", "fep", "snark", "zorb", "mip", "florp", "toma", "glorp",
          "kiki", "bouba"]
_ADJ = ["old", "loud", "blue", "fast", "green", "tall", "soft", "cold", "round", "heavy",
        "bright", "quiet"]
_NAMES = ["Paul", "Ben", "Ruth", "Tom", "Sam", "Rosa", "Max", "Anna", "Leo", "Nina",
          "Clara", "Zoe"]
_VERBS = ["jump", "swim", "sing", "run", "fly", "dig", "climb", "read"]
_THINGS = [("rains", "umbrella"), ("is sunny", "hat"), ("is cold", "coat"),
           ("is dark", "lamp"), ("snows", "sled"), ("is windy", "kite"),
           ("is hot", "fan"), ("is late", "taxi")]
_ORDER = [("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
          ("faster", "fastest", "slowest"), ("heavier", "heaviest", "lightest")]


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "s")) else "s")


def _pair(prompt: str, good: str, bad: str) -> dict:
    return {"prompt": prompt, "good": f" {good}", "bad": f" {bad}"}


def logic_items() -> list[dict]:
    """80 forced-choice items, 16 per family, the answer first in the prompt every other
    item (see the module docstring)."""
    items = []
    for i in range(16):
        a, b = _NONCE[i % 12], _NONCE[(i + 5 + i // 12) % 12]
        p, q = _ADJ[(i + i // 12) % 12], _ADJ[(i + 7 + 2 * (i // 12)) % 12]
        name = _NAMES[(5 * i) % 12]
        first, second = f"All {_plural(a)} are {p}.", f"All {_plural(b)} are {q}."
        premises = f"{first} {second}" if i % 2 == 0 else f"{second} {first}"
        items.append(_pair(f"{premises} {name} is a {a}. Therefore, {name} is", p, q))
    for i in range(16):
        a, b, c, d, e = (_plural(_NONCE[(i + k + i // 12) % 12]) for k in (0, 3, 6, 9, 1))
        chain = f"All {a} are {b}. All {b} are {c}."
        other = f"All {d} are {e}."
        premises = f"{chain} {other}" if i % 2 == 0 else f"{other} {chain}"
        items.append(_pair(f"{premises} Therefore, all {a} are", c, e))
    for i in range(16):
        a, name = _NONCE[(i + 2) % 12], _NAMES[(i + 3) % 12]
        v1, v2 = _VERBS[i % 8], _VERBS[(i + 3 + i // 8) % 8]
        neg, pos = f"No {a} can {v1}.", f"Every {a} can {v2}."
        premises = f"{pos} {neg}" if i % 2 == 0 else f"{neg} {pos}"
        items.append(_pair(f"{premises} {name} is a {a}. Therefore, {name} can", v2, v1))
    for i in range(16):
        (c1, x), (c2, y) = _THINGS[i % 8], _THINGS[(i + 1 + i // 8) % 8]
        r1, r2 = f"If it {c1}, we take the {x}.", f"If it {c2}, we take the {y}."
        rules = f"{r1} {r2}" if i % 2 == 0 else f"{r2} {r1}"
        items.append(_pair(f"{rules} Today it {c1}. So we take the", x, y))
    for i in range(16):
        comp, top, bottom = _ORDER[i % 4]
        n1, n2, n3 = (_NAMES[(i + k + i // 12) % 12] for k in (0, 5, 9))
        facts = f"{n1} is {comp} than {n2}. {n2} is {comp} than {n3}."
        if i % 2 == 0:  # the answer is the first name of the prompt
            items.append(_pair(f"{facts} So the {top} of the three is", n1, n3))
        else:  # the last name
            items.append(_pair(f"{facts} So the {bottom} of the three is", n3, n1))
    return items


_OPS = {"+": ("plus", "sum", lambda a, b: a + b), "-": ("minus", "difference", lambda a, b: a - b),
        "*": ("times", "product", lambda a, b: a * b)}
_TEMPLATES = (
    "{a} {sym} {b} =",
    "{a} {word} {b} equals",
    "What is {a} {word} {b}? Answer:",
    "Q: What is {a} {sym} {b}? A:",
    "The {noun} of {a} and {b} is",
    "Compute {a} {sym} {b}. Result:",
)


def arithmetic_items() -> list[dict]:
    """120 one-operation problems (40 per operation: one and two digits, non-negative
    results), each operation cycling through the six templates."""
    problems = []
    for k in range(40):
        a, b = 1 + (7 * k) % 9, 1 + (5 * k + 3) % 9
        if k >= 20:
            a, b = 10 + (37 * k) % 90, 10 + (53 * k + 11) % 90
        problems += [("+", a, b), ("-", max(a, b), min(a, b)), ("*", a if k < 20 else a % 13,
                                                               b if k < 20 else b % 11 + 2)]
    out, seen, templates = [], set(), {op: cycle(_TEMPLATES) for op in _OPS}
    for sym, a, b in problems:
        word, noun, fn = _OPS[sym]
        prompt = next(templates[sym]).format(a=a, b=b, sym=sym, word=word, noun=noun)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "continuation": f" {fn(a, b)}"})
    return out


def write(directory: str | Path | None = None) -> None:
    """Rewrite the two files (default: the package's probesets folder)."""
    folder = Path(directory) if directory else Path(__file__).with_name("probesets")
    for name, items in (("logic", logic_items()), ("arithmetic", arithmetic_items())):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))


if __name__ == "__main__":
    write()
