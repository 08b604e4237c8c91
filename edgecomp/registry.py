"""A tiny name -> handler registry, used by every stage (compression methods, tasks, artifact formats).

Adding a method means adding a module that calls ``REGISTRY.register(name)``; call sites never change.
"""

from typing import Callable, Generic, TypeVar

from .errors import EdgecompError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise EdgecompError(f"unknown {self.kind} {name!r}", f"use one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
