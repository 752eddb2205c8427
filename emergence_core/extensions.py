"""Extensions: the user's own tasks, scales and expensive measures, registered everywhere.

A task, a scale and an expensive measure are each one registry entry
(``tasks.register_task``, ``model.register_scale``, ``expensive.register_measure``). A plugin
is a module that registers entries when imported; a sweep file names its plugins
(``plugins: [mylab.emerge_ext]``) and may declare scales by shape (``define_scales``).
``Extensions.apply()`` brings them into a process: the sweep driver calls it before the
sweep file's tasks and scales are checked, and every trial worker and probe actor calls it
before it builds a model, so a registration works in every process of a sweep.

A plugin module must be importable where the sweep runs (installed, or on PYTHONPATH).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

from emergence_core.scales import ScaleShape, register_scale

__all__ = ["ExtensionError", "Extensions"]


class ExtensionError(ValueError):
    """A plugin that cannot be imported, or a registration that clashes; one line."""


@dataclass(frozen=True)
class Extensions:
    plugins: tuple[str, ...] = ()
    scales: tuple[ScaleShape, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.plugins or self.scales)

    def apply(self) -> None:
        """Import the plugins, then register the declared scales; idempotent."""
        load_plugins(self.plugins)
        for shape in self.scales:
            try:
                register_scale(shape)
            except ValueError as err:
                raise ExtensionError(f"define_scales.{shape.name}: {err}") from None


def load_plugins(names: Iterable[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise ExtensionError(f"plugin {name!r} cannot be imported ({err}); install it or "
                                 "put its folder on PYTHONPATH") from None
        except Exception as err:  # the plugin's own error (a clash included): one line
            text = str(err).strip().splitlines()
            raise ExtensionError(f"plugin {name!r} failed while registering: "
                                 f"{type(err).__name__}: {text[0] if text else ''}") from None
