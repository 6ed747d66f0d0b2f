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


def _refuse_to_load(x):
    raise ValueError(f"refuses to load ({x})")


class LoadsNowhere:
    """Pickles anywhere; its __reduce__ names a function that raises when the
    pickle is loaded (in the parent, or in the next stage's worker)."""

    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (_refuse_to_load, (self.x,))


def return_unloadable_at_3(x):
    """A result that pickles in the worker and raises when the parent loads it."""
    return LoadsNowhere(x) if x == 3 else x


def return_nested_unloadable_at_3(x):
    """As return_unloadable_at_3, the bad object deep inside a container that
    the results around it share objects with (the pickle's memo refers across
    items)."""
    return {"x": x, "deep": [LoadsNowhere(x)]} if x == 3 else {"x": x, "deep": [x]}


def slow_unloadable_at_3(x):
    """return_unloadable_at_3 after a little work: many apply_async calls are
    in flight together when the bad result arrives."""
    import time
    time.sleep(0.02)
    return return_unloadable_at_3(x)


def _load_in_parent_only(x):
    import multiprocessing
    if multiprocessing.parent_process() is not None:
        raise ValueError(f"refuses to load in a worker ({x})")
    return InputOnlyForParent(x)


class InputOnlyForParent:
    """An input item that pickles in the parent but cannot be loaded by a worker."""

    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (_load_in_parent_only, (self.x,))


class SetsNoState:
    """Built, then its __setstate__ raises on load (the BUILD opcode fails)."""

    def __init__(self, x):
        self.x = x

    def __getstate__(self):
        return {"x": self.x}

    def __setstate__(self, state):
        raise ValueError(f"no state ({state['x']})")


class Fine:
    """Loads anywhere; in the same module as the classes that do not."""

    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Fine and other.x == self.x
