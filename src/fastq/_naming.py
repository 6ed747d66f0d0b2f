"""Names and paths: the file a queue or topic name refers to."""
from __future__ import annotations

import os

DEFAULT_DIR = "/dev/shm"

__all__ = ["segment_path", "DEFAULT_DIR"]


def segment_path(name: "str | os.PathLike[str]") -> str:
    """The file a queue name refers to, as an absolute path.

    A ``str`` name without ``/`` lives in ``$FASTQ_DIR`` (default
    ``/dev/shm``); a name with ``/``, or an ``os.PathLike`` (a
    ``pathlib.Path``), is a path, on any filesystem.  A relative path is
    resolved against the current directory now, so that a handle pickled
    into another process (or used after ``os.chdir``) names the same file.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str or an os.PathLike of str, not {name!r}")
        is_path = True
    elif isinstance(name, str):
        is_path = "/" in name
    else:
        raise TypeError(f"name must be a str or an os.PathLike of str, not "
                        f"{type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"name must not contain a NUL byte: {name!r}")
    base = os.path.basename(name)
    if not base or base in (".", ".."):
        raise ValueError(f"invalid queue name: {name!r}")
    nbytes = len(os.fsencode(base))
    if nbytes > _NAME_MAX:
        raise ValueError(f"name too long: its file name {base[:40]!r}... has {nbytes} bytes, "
                         f"at most {_NAME_MAX} are allowed (a segment is created under a "
                         "temporary name that adds to it)")
    path = name if is_path else os.path.join(os.environ.get("FASTQ_DIR", DEFAULT_DIR), name)
    return os.path.abspath(path)


#: longest file name of a segment: NAME_MAX (255) less the suffix of the
#: temporary file it is created as (".tmp-<pid up to 7 digits>-<16 hex>")
_NAME_MAX = 255 - len(".tmp-4194304-0123456789abcdef")
