"""Registry: a named table of functions, one per axis of the design (advantages, objectives, rewards, ...).

Unknown names are errors that list the valid names and suggest the closest one, so a typo in a config
fails at load time with a message a user can act on.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not in a registry; the message names the registry and the choices."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A " did you mean 'x'?" suffix for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Mapping from a stable public name to an entry.

    >>> r = Registry("advantage estimator")
    >>> @r.register("group_mean")
    ... def f(x):
    ...     return x
    >>> r["group_mean"](3)
    3
    >>> r["grup_mean"]
    Traceback (most recent call last):
    ...
    reinforced.registry.UnknownNameError: unknown advantage estimator 'grup_mean'; did you mean 'group_mean'? valid: group_mean
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            names = self.names()
            msg = f"unknown {self.kind} {name!r};{did_you_mean(name, names)} valid: {', '.join(names)}"
            raise UnknownNameError(msg.replace(";  ", "; ").replace("; valid", "; valid")) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
