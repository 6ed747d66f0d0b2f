"""What the pages of this process's fastq segments cost it: the mappings of
anonymous segments (memfds named "fastq") read from /proc/self/smaps.
Importable by name, so that a spawned worker can run it."""
from __future__ import annotations

from typing import List, Tuple


def fastq_mappings() -> List[Tuple[int, int]]:
    """(size, resident bytes) of each mapping of an anonymous fastq segment."""
    out, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                cur = None
                if len(head) >= 6 and head[5].startswith("/memfd:fastq"):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    cur = [hi - lo, 0]
                    out.append(cur)
            elif cur is not None and head[0] == "Rss:":
                cur[1] = int(head[1]) * 1024
    return [tuple(m) for m in out]
