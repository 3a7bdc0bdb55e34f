"""Name → object registries, so configs resolve names without if/elif chains.

Examples
--------
>>> from lensml.registry import Registry
>>> PROFILES = Registry("mass profile")
>>> @PROFILES.register("sis")
... class SIS: ...
>>> PROFILES.get("sis") is SIS
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects registered by a decorator.

    Parameters
    ----------
    kind : str
        What the registry holds, used in error messages (e.g. ``"mass profile"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""
        key = name.lower()

        def decorator(obj: T) -> T:
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` (case-insensitive).

        Raises
        ------
        KeyError
            If no object of that name exists; the message lists the known names.
        """
        try:
            return self._items[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


# The project's registries: every layer registers into these by decorator, and configs
# resolve names through them.
GENERATORS: Registry = Registry("generator")
NETWORKS: Registry = Registry("network")
BASELINES: Registry = Registry("baseline")
METRICS: Registry = Registry("metric")
