"""A small least-recently-used cache for compiled functions and samplers.

A generator may live for hours and see any mix of shapes and options; what
it compiles for them is kept per instance and bounded, so memory stays flat
and one call's leftovers never change another's results.
"""

from collections import OrderedDict


class Bounded:
    """At most ``size`` values by key; the least recently used goes first."""

    def __init__(self, size):
        self.size = size
        self._items = OrderedDict()

    def get(self, key, make):
        """The value of ``key``, made by ``make()`` if absent."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.size:
            self._items.popitem(last=False)
        value = self._items[key] = make()
        return value

    def __len__(self):
        return len(self._items)

    def keys(self):
        return list(self._items)
