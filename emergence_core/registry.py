"""One registry type for everything a user adds by name: tasks, scales, expensive measures,
Pythia probe sets; and the one "did you mean" every unknown name gets (lm-evaluation-harness's
rule: an unknown name gets the nearest known one).

A ``Registry`` is a read-only mapping from name to entry with two ways in: ``register``
refuses a second, different entry under a taken name, and ``lookup`` turns an unknown name
into one ``RegistryError`` line naming the nearest names and the choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "RegistryError", "choice_hint", "did_you_mean", "did_you_mean_of",
           "nearest"]

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name, or a second entry under a taken one; the message is one line."""


def nearest(name: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.5
            ) -> list[str]:
    """The ``n`` choices spelled most like ``name`` (difflib's ratio at least ``cutoff``), or
    else one that differs from it only in case."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=n, cutoff=cutoff)
    return close or [c for c in choices if c.lower() == str(name).lower()][:n]


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.5,
                 quote: bool = True, prefix: str = "") -> str:
    """``prefix`` + ``did you mean 'X'?`` (or ``'X' or 'Y'``) for the nearest choices; ``""``
    when none is near."""
    return did_you_mean_of(nearest(name, choices, n=n, cutoff=cutoff), quote=quote,
                           prefix=prefix)


def did_you_mean_of(near: Iterable[str], *, quote: bool = True, prefix: str = "") -> str:
    """The same phrase for suggestions found another way (e.g. by a revision's step)."""
    near = [repr(c) if quote else str(c) for c in near]
    return f"{prefix}did you mean {' or '.join(near)}?" if near else ""


def choice_hint(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?); choose from A, B``: what follows an unknown name."""
    choices = tuple(choices)
    hint = did_you_mean(name, choices)
    return f"{f' ({hint})' if hint else ''}; choose from {', '.join(choices)}"


class Registry(Mapping[str, T], Generic[T]):
    """Entries of one ``kind`` by name. ``key`` maps a name as given to its key (tasks are
    upper case, scales lower case); ``same`` says when a second registration is the same
    entry again (a no-op) rather than a clash; ``error`` is the kind's own RegistryError."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *,
                 key: Callable[[str], str] = str,
                 same: Callable[[T, T], bool] = lambda a, b: a == b,
                 error: type[RegistryError] = RegistryError) -> None:
        self.kind, self.key, self.same, self.error = kind, key, same, error
        self._entries: dict[str, T] = dict(entries or {})

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def restore(self, entries: Mapping[str, T]) -> None:
        """Hold exactly ``entries`` again (a test undoing what it registered)."""
        self._entries = dict(entries)

    def register(self, name: str, entry: T, *, clash: str = "") -> T:
        """Add ``entry``; the same one again is a no-op, another under its name an error
        (``clash`` says how the held one differs)."""
        key = self.key(name)
        held = self._entries.get(key)
        if held is not None and not self.same(held, entry):
            raise self.error(f"{self.kind} {name!r} is already registered{clash}; choose "
                             "another name")
        self._entries[key] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry called ``name``, or the kind's error with the nearest names."""
        entry = self._entries.get(self.key(str(name)))
        if entry is None:
            raise self.error(f"unknown {self.kind} {name!r}"
                             + choice_hint(self.key(str(name)), tuple(self._entries)))
        return entry
