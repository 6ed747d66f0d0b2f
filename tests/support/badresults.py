"""Worker functions whose result or exception cannot travel back to the parent
(importable by name, so that spawn and forkserver children can unpickle them)."""
import threading


def lock_at_3(x):
    """A result that cannot be pickled (a lock) for the item 3."""
    return threading.Lock() if x == 3 else x


class UnpicklableError(Exception):
    def __init__(self, x):
        super().__init__(x)
        self.hook = threading.Lock()


def raise_unpicklable_at_3(x):
    if x == 3:
        raise UnpicklableError(x)
    return x


class NoArgsBackError(Exception):
    """Pickles, but cannot be rebuilt from its args (two required, one kept)."""

    def __init__(self, a, b):
        super().__init__(a)


def raise_unrebuildable_at_3(x):
    if x == 3:
        raise NoArgsBackError(x, "b")
    return x


def return_unrebuildable_at_3(x):
    """A result that pickles in the worker but cannot be rebuilt in the parent."""
    return NoArgsBackError(x, "b") if x == 3 else x
