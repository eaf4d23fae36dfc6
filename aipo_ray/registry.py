"""Named plug-ins: rankers and generation backends are registered by a decorator and picked by name.

    RANKERS = Registry("ranking backend", builtin_modules=("aipo_ray.ranking.pairrm", ...),
                       entry_point_group="aipo_ray.rankers")

    @RANKERS.register("my_ranker", check=lambda cfg: ...)
    def build_my_ranker(cfg, ctx): ...

The built-in plug-ins register themselves when their module is imported; the registry imports
those modules the first time it is asked for a name, so a config is checked against every
built-in without the caller importing anything. A third-party package adds its own through a
Python entry point in `entry_point_group` (the object it names is registered under the entry
point's name, unless importing it already registered that name). A module imported before the
config is validated (a custom DAG's own file) can simply use the decorator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Check = Callable[[Any], None]


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    check: Check | None = None  # raises ValueError when a config cannot work with this plug-in


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: Sequence[str] = (),
                 entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_modules = tuple(builtin_modules)
        self._entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, *, check: Check | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`; `check(cfg)` runs at config
        validation and should raise ValueError naming the key that is missing or wrong."""

        def decorate(value: T) -> T:
            known = self._entries.get(name)
            if known is not None and known.value is not value:
                raise ValueError(f"{self.kind} {name!r} is already registered by {known.value!r}")
            self._entries[name] = Entry(name, value, check)
            return value

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before importing: the modules call register() on this registry
        for module in self._builtin_modules:
            importlib.import_module(module)
        if self._entry_point_group:
            for point in entry_points(group=self._entry_point_group):
                value = point.load()
                if point.name not in self._entries:
                    self.register(point.name)(value)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def get(self, name: str) -> T:
        return self.entry(name).value

    def check(self, name: str, cfg: Any) -> None:
        """ValueError unless `name` is registered and its check accepts `cfg`."""
        entry = self.entry(name)
        if entry.check is not None:
            entry.check(cfg)
