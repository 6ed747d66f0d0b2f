"""``fastq top``: a live view of every segment of a directory, refreshed every
second: depth (a topic subscriber's row: its lag), rates in and out over the
last interval, the mean wait Little's law gives (depth / rate out) beside the
time in queue measured (p50, p99 of the samples kept in the segment), per
segment and per topic subscriber, sorted by what is most behind.  Keys:
``l`` lag (default), ``i`` rate in, ``o`` rate out, ``w`` measured wait
(p99), ``n`` name, ``q`` quit.  Draws with curses (standard library) in any
terminal from 80x24 up; ``--once`` prints one frame as text."""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from . import _ops

SORTS = {"l": "lag", "i": "in/s", "o": "out/s", "w": "p99", "n": "name"}
HEAD = f"{'NAME':<18} {'KIND':<5} {'DEPTH':>7} {'IN/s':>7} {'OUT/s':>7} " \
       f"{'LITTLE':>7} {'WAIT50':>7} {'WAIT99':>7} {'PROCS':>5}"  # 78 columns


class Sampler:
    """Rows of the view; rates from the difference of two samples."""

    def __init__(self, directory: str):
        self.directory = directory
        self.prev: Dict[str, Tuple[float, int, int]] = {}

    def rows(self) -> List[Dict[str, Any]]:
        now = time.monotonic()
        rows: List[Dict[str, Any]] = []
        for path, seg, err in _ops.scan(self.directory):
            name = os.path.basename(path)
            if seg is None:
                rows.append({"name": name, "kind": "?", "error": err})
                continue
            with seg:
                s = seg.stats()
            prev = self.prev.get(name)
            self.prev[name] = (now, s.puts, s.gets)
            if prev and now > prev[0]:
                dt = now - prev[0]
                rin, rout = (s.puts - prev[1]) / dt, (s.gets - prev[2]) / dt
            else:  # first sample: since creation
                rin, rout = s.arrival_rate, s.departure_rate
            rows.append({"name": name, "kind": s.kind, "depth": s.depth, "lag": s.depth,
                         "in/s": rin, "out/s": rout, "procs": s.processes,
                         "dead": s.dead_processes,
                         "wait": s.depth / rout if rout > 0 else None,
                         "p50": s.wait_p50_s, "p99": s.wait_p99_s, "error": None})
            for sub in s.subscribers:
                label = sub["name"] or sub["group"] or f"pid {sub['pid']}"
                key = f"{name}\0{label}"
                sprev = self.prev.get(key)
                self.prev[key] = (now, 0, sub["got"])
                sout = ((sub["got"] - sprev[2]) / (now - sprev[0])
                        if sprev and now > sprev[0] and sub["got"] >= sprev[2] else None)
                rows.append({"name": f"  {label}", "kind": "sub", "depth": sub["lag"],
                             "lag": sub["lag"], "in/s": None, "out/s": sout,
                             "procs": 1 if sub["alive"] else 0, "dead": 0,
                             "wait": sub["lag"] / sout if sout else None,
                             "p50": sub["wait_p50_s"], "p99": sub["wait_p99_s"],
                             "error": None, "parent": name})
            rows += self._bridges(name, s.path, now)
        return rows

    def _bridges(self, name: str, path: Optional[str], now: float) -> List[Dict[str, Any]]:
        """Rows of the running ``fastq bridge`` bridges of a segment: in/s
        what an inbound bridge puts, out/s what an outbound one has acked
        (JetStream stored it), lag the messages in flight across the bridge,
        procs 1 while connected."""
        from ._bridge_cli import read_status  # noqa: PLC0415

        rows = []
        for b in read_status(path):
            key = f"{path}#{b['pid']}.{b['bridge']}"
            moved = b["forwarded"] if b["direction"] == "in" else b["acked"]
            prev = self.prev.get(key)
            self.prev[key] = (now, moved, 0)
            rate = (moved - prev[1]) / (now - prev[0]) if prev and now > prev[0] else None
            inbound = b["direction"] == "in"
            rows.append({"name": f"  {'<' if inbound else '>'}nats {b['subject']}",
                         "kind": "brdg", "depth": None,
                         "lag": max(0, b["forwarded"] - b["acked"]),
                         "in/s": rate if inbound else None, "out/s": None if inbound else rate,
                         "procs": 1 if b["connected"] else 0, "dead": 0, "wait": None,
                         "p50": None, "p99": None, "error": None, "parent": name})
        return rows


def _sorted(rows: List[Dict[str, Any]], key: str) -> List[Dict[str, Any]]:
    """Segments by key (most first; name ascending), each followed by its
    subscribers, most behind first."""
    tops = [r for r in rows if not r.get("parent")]
    subs: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("parent"):  # a subscriber or a bridge of a segment
            subs.setdefault(r["parent"], []).append(r)
    if key == "name":
        tops.sort(key=lambda r: r["name"])
    else:
        tops.sort(key=lambda r: (-(r.get(key) or 0), r["name"]))
    out = []
    for r in tops:
        out.append(r)
        out += sorted(subs.get(r["name"], ()),
                      key=lambda r: -(r.get(key) or 0) if key not in ("name", "in/s")
                      else -r["lag"])
    return out


def _num(v: Optional[float]) -> str:
    return "-" if v is None else _ops.human_count(v)


def frame(rows: List[Dict[str, Any]], key: str, directory: str, width: int = 80,
          height: int = 24) -> List[str]:
    """The lines of one screen (at most height lines of at most width
    columns)."""
    title = (f"fastq top {time.strftime('%H:%M:%S')}  sort: {key}  "
             f"[l]ag [i]n [o]ut [w]ait [n]ame [q]uit  {directory}")
    lines = [title, HEAD]
    for r in _sorted(rows, key):
        if r["error"]:
            lines.append(f"{r['name'][:18]:<18} ?     {r['error']}")
            continue
        procs = str(r["procs"]) + (f"+{r['dead']}d" if r["dead"] else "")
        secs = _ops.human_secs
        lines.append(f"{r['name'][:18]:<18} {r['kind']:<5} {_num(r['depth']):>7} "
                     f"{_num(r['in/s']):>7} {_num(r['out/s']):>7} {secs(r['wait']):>7} "
                     f"{secs(r['p50']):>7} {secs(r['p99']):>7} {procs:>5}")
    if len(rows) == 0:
        lines.append("(no segments)")
    if len(lines) > height:
        lines = lines[:height - 1] + [f"... {len(lines) - height + 1} more rows"]
    return [ln[:width] for ln in lines]


def _curses_loop(stdscr: Any, sampler: Sampler, args: argparse.Namespace) -> None:
    import curses  # noqa: PLC0415

    curses.curs_set(0)
    stdscr.timeout(int(args.interval * 1000))
    key = "lag"
    rows = sampler.rows()
    n = 0
    while True:
        h, w = stdscr.getmaxyx()
        stdscr.erase()
        for y, ln in enumerate(frame(rows, key, sampler.directory, w - 1, h)):
            stdscr.addstr(y, 0, ln, curses.A_BOLD if y == 1 else curses.A_NORMAL)
        stdscr.refresh()
        ch = stdscr.getch()  # waits up to the interval
        if ch in (ord("q"), ord("Q"), 27):
            return
        if 0 <= ch < 256 and chr(ch) in SORTS:
            key = SORTS[chr(ch)]
            continue  # redraw at once with the same sample
        n += 1
        if args.iterations and n >= args.iterations:
            return
        rows = sampler.rows()


def cmd_top(args: argparse.Namespace) -> int:
    sampler = Sampler(_ops._dir(args))
    if args.once:
        rows = sampler.rows()
        if args.interval > 0:
            time.sleep(args.interval)
            rows = sampler.rows()  # rates over one interval
        print("\n".join(frame(rows, SORTS.get(args.sort, "lag"), sampler.directory)))
        return 0
    import curses  # noqa: PLC0415

    curses.wrapper(_curses_loop, sampler, args)
    return 0


def add_arguments(sub: Any) -> None:
    p = _ops.subcommand(sub, "top", cmd_top, "a live view of every segment (q quits)", __doc__)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one frame as text and exit")
    p.add_argument("--sort", choices=sorted(SORTS), default="l",
                   help="--once: the sort key (l lag, i in, o out, w wait p99, n name)")
    p.add_argument("--iterations", type=int, default=0,
                   help="exit after this many refreshes (0: until q)")
