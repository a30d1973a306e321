"""One shape for every name -> object table that a config value or a command-line flag picks from.

Search operators, perceptual metrics, bench backends, export formats, deploy targets and the
built-in synthetic tasks each keep one :class:`Registry`. ``coevo.config`` reads the names from
these registries when it validates a value, so an object registered later (a new metric, a
new operator) is a valid name at once, and a misspelt one fails with the closest name::

    METRICS = Registry("perceptual metric")

    @METRICS.register("l1")
    def make_l1(**kw): ...

    METRICS.lookup("l2")  # ConfigError: unknown perceptual metric 'l2'; did you mean 'l1'? ...

A registry is a mutable mapping (``name in reg``, ``reg[name]``, ``sorted(reg)``), so code and
tests that treated these tables as dicts keep working; names keep the order they were registered.
"""
from __future__ import annotations

import difflib
from typing import Dict, Generic, Iterator, MutableMapping, Optional, Tuple, Type, TypeVar
from ..errors import ConfigError
T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """Named objects of one kind. ``kind`` words the error (``"unknown {kind} 'x'"``); ``error`` is the
    exception class :meth:`lookup` raises (a ConfigError unless the names come from somewhere else)."""

    def __init__(self, kind: str, error: Type[Exception] = ConfigError) -> None:
        self.kind = kind
        self.error = error
        self._items: Dict[str, T] = {}

    def register(self, name: str, obj: Optional[T] = None):
        """``reg.register(name, obj)`` adds ``obj`` and returns it; ``@reg.register(name)`` decorates.
        A name registered twice is a mistake (two modules would silently fight over it)."""
        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def names(self) -> Tuple[str, ...]:
        """The registered names, in the order they were registered."""
        return tuple(self._items)

    def lookup(self, name: str) -> T:
        """The object registered as ``name``; else :attr:`error` naming the closest name and all of them."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a config file
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name: object, extra: Tuple[str, ...] = ()) -> str:
        """``unknown <kind> 'x'; did you mean 'y'? choose one of [...]`` (``extra``: further accepted names)."""
        choices = [*self.names(), *extra]
        close = difflib.get_close_matches(str(name), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        return f"unknown {self.kind} {name!r}{hint} choose one of {choices}"

    # the mapping protocol, so a registry reads like the dict it replaces
    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __setitem__(self, name: str, obj: T) -> None:
        self._items[name] = obj

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


__all__ = ["Registry"]
