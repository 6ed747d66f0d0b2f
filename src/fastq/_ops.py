"""Operations subcommands of the ``fastq`` command: ``ls``, ``stat``, ``rm``,
``gc``, ``check`` (and ``top``, ``metrics``).  Each reads segments without
taking a process slot in them (fastq.Stats, fq_inspect.c).

Exit status: 0 success; 1 a check found a problem (or ``rm`` could not
remove a name); 2 a usage error or a segment that cannot be opened.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from . import _core
from ._errors import SegmentError
from ._naming import DEFAULT_DIR, segment_path

__all__ = ["add_arguments", "main", "open_segment", "scan"]


def _dir(args: argparse.Namespace) -> str:
    return args.dir or os.environ.get("FASTQ_DIR", DEFAULT_DIR)


def open_segment(path: str) -> Any:
    """A Queue or Topic handle on the segment at path, named by the file's
    name (no slot is taken until the handle puts or gets, which these tools
    never do; and opening it changes nothing on disk: a killed creator's
    second name of it stays for gc to judge, FQ_OPEN_NOSWEEP); SegmentError
    if it is no valid segment."""
    from ._queue import Queue  # noqa: PLC0415
    from ._topic import Topic  # noqa: PLC0415

    seg: Union[Queue, Topic]
    try:
        seg = Queue(path, _how="inspect", trusted=True)
    except ValueError as e:
        if "is a topic" not in str(e):
            raise
        seg = Topic(path, _how="inspect", trusted=True)
    seg._name = os.path.basename(path)
    return seg


def scan(directory: str) -> Iterator[Tuple[str, Any, Optional[str]]]:
    """(path, handle or None, error or None) of every regular file of
    directory that is a fastq segment, or that a fastq segment's error
    names (a file of another layout version, a damaged one); files that
    are not segments at all are left out, and so is the temporary file of
    a creation (see _creation_tmp): a segment that only has such a name (renamed
    or linked there) is listed."""
    for path in _files(directory):
        try:
            if _creation_tmp(path):
                continue
            yield path, open_segment(path), None
        except SegmentError as e:
            if "not a fastq segment" in str(e) or "smaller than a segment header" in str(e):
                continue  # some other program's file
            yield path, None, str(e)
        except FileNotFoundError:
            continue  # removed since the listing (a creator's temporary name, ...)
        except OSError as e:  # unreadable (another user's)
            yield path, None, f"{type(e).__name__}: {e}"


def _files(directory: str) -> Iterator[str]:
    """The paths of the regular files of directory (no symlinks), sorted."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for n in names:
        path = os.path.join(directory, n)
        if os.path.isfile(path) and not os.path.islink(path):
            yield path


def _creation_tmp(path: str) -> int:
    """What the file at path is by the core's rule for the temporary files
    of creations (fastq._core.tmp_file, fq_tmp_file in fq_segment.c, the
    rule of the core's own sweep): 0 (TMP_NONE) if it is none: a name of
    another form, or a segment of its own that only has a name of the form
    <name>.tmp-<pid>-<16 hex digits>; else TMP_CREATING or TMP_LEFTOVER.
    A file that cannot be read counts as none (whoever opens it next says
    why); FileNotFoundError if it is gone."""
    try:
        return int(_core.tmp_file(path))
    except FileNotFoundError:
        raise
    except OSError:
        return int(_core.TMP_NONE)


# ---- formatting -----------------------------------------------------------


def human_bytes(n: float) -> str:
    """1536 -> '1.5K' (binary units)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit or 'B'}" if unit == "" or n >= 100 else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)  # not reached


def human_count(n: float) -> str:
    """12345 -> '12.3k'."""
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" or n >= 100 else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)  # not reached


def human_secs(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 1e-6:
        return f"{s * 1e9:.0f}ns"
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.1f}s"


def _table(rows: List[List[str]], head: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [head] + rows]
    return "\n".join(lines)


def _ls_row(path: str, seg: Any, err: Optional[str]) -> Dict[str, Any]:
    if seg is None:
        return {"name": os.path.basename(path), "path": path, "error": err}
    with seg:
        s = seg.stats()
    return {"name": os.path.basename(path), "path": path, "kind": s.kind,
            "capacity": s.capacity, "depth": s.depth, "bytes_used": s.bytes_used,
            "processes": s.processes, "dead_processes": s.dead_processes,
            "attached": s.processes > 0, "temporary": s.temporary, "error": None}


# ---- subcommands ----------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    rows = [_ls_row(*x) for x in scan(_dir(args))]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no segments in {_dir(args)}")
        return 0
    table = []
    for r in rows:
        if r["error"]:
            table.append([r["name"], "?", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        flags = "temp" if r["temporary"] else ""
        table.append([r["name"], r["kind"], human_bytes(r["capacity"]), human_count(r["depth"]),
                      human_bytes(r["bytes_used"]), str(r["processes"]),
                      str(r["dead_processes"]), flags])
    print(_table(table, ["NAME", "KIND", "CAPACITY", "DEPTH", "USED", "PROCS", "DEAD", ""]))
    return 0


def _resolve(name: str, args: argparse.Namespace) -> str:
    if "/" in name:
        return os.path.abspath(name)
    return os.path.join(_dir(args), name) if getattr(args, "dir", None) else segment_path(name)


def _open_named(name: str, args: argparse.Namespace) -> Tuple[Any, Optional[str]]:
    path = _resolve(name, args)
    try:
        return open_segment(path), None
    except FileNotFoundError:
        return None, f"{name}: no such segment ({path})"
    except (SegmentError, OSError, ValueError) as e:
        return None, f"{name}: {e}"


def _waits_text(d: Dict[str, Any]) -> str:
    """p50/p99/max of a Stats dict's (or subscriber row's) sampled waits."""
    if not d["wait_samples"]:
        return "no samples yet"
    return (f"p50 {human_secs(d['wait_p50_s'])}, p99 {human_secs(d['wait_p99_s'])}, "
            f"max {human_secs(d['wait_max_s'])} ({d['wait_samples']} samples"
            + (f" over the last {human_secs(d['wait_window_s'])}" if d.get("wait_window_s")
               is not None else "") + ")")


def format_stat(s: Any) -> str:
    """The human-readable text of ``fastq stat``."""
    out = [f"{s.kind} {s.name}  ({s.path or 'anonymous'})",
           f"  capacity {human_bytes(s.capacity)}, max message {human_bytes(s.max_message)}, "
           f"{s.max_processes} process slots" + (", temporary" if s.temporary else "")
           + (", SHUT DOWN" if s.shutdown else ""),
           f"  processes    {s.processes} alive, {s.dead_processes} dead "
           f"(created by pid {s.creator_pid}, {human_secs(s.age_s)} ago)",
           f"  depth        {s.depth} messages, {human_bytes(s.bytes_used)} of the ring in use "
           f"({100.0 * s.bytes_used / s.capacity:.1f}%)"]
    if s.kind == "queue":
        out.append(f"  unacked      {s.unacked} messages, {s.unacked_deliveries} deliveries"
                   + (f", oldest {human_secs(s.oldest_unacked_s)} ago"
                      if s.oldest_unacked_s is not None else ""))
    out += [f"  put          {s.puts} messages, {human_bytes(s.put_bytes)}",
            f"  got          {s.gets} messages" +
            (f", {human_bytes(s.get_bytes)} delivered" if s.kind == "queue" else ""),
            f"  ring full    {s.full} puts, blocked {human_secs(s.blocked_s)} in all",
            f"  redelivered  {s.redelivered}, nacked {s.nacked}",
            f"  recovered    {s.recovered_slots} dead slots, {s.recovered_puts} puts, "
            f"{s.recovered_gets} gets",
            f"  rates        {s.arrival_rate:.1f}/s in, {s.departure_rate:.1f}/s out "
            f"(since creation); Little's law mean wait {human_secs(s.mean_wait_s)}",
            f"  time in queue measured: {_waits_text(s.to_dict())}"]
    if s.subscribers:
        rows = [[r["name"] or r["group"] or "(anonymous)", str(r["pid"] or "-"),
                 "yes" if r["alive"] else "no", str(r["position"]), str(r["lag"]),
                 human_bytes(r["lag_bytes"]), str(r["unacked"]), str(r["got"]),
                 human_secs(r["wait_p50_s"]), human_secs(r["wait_p99_s"])]
                for r in sorted(s.subscribers, key=lambda r: -r["lag"])]
        out.append("  subscribers (most behind first), WAIT: time in queue, measured:")
        out += ["    " + ln for ln in
                _table(rows, ["NAME/GROUP", "PID", "ALIVE", "POSITION", "LAG", "LAG B",
                              "UNACKED", "GOT", "WAIT P50", "WAIT P99"]).splitlines()]
    return "\n".join(out)


def cmd_stat(args: argparse.Namespace) -> int:
    results, rc = [], 0
    for name in args.names:
        seg, err = _open_named(name, args)
        if seg is None:
            print(err, file=sys.stderr)
            rc = 2
            continue
        with seg:
            results.append(seg.stats())
    # the counters of running `fastq bridge` processes bridging these segments
    from ._bridge_cli import format_status, read_status  # noqa: PLC0415

    bridges = [read_status(s.path) for s in results]
    if args.prometheus:
        from . import _metrics  # noqa: PLC0415

        sys.stdout.write(_metrics.exposition(results))
    elif args.json:
        docs = [dict(s.to_dict(), **({"bridges": b} if b else {}))
                for s, b in zip(results, bridges)]
        print(json.dumps(docs if len(args.names) > 1 else (docs[0] if docs else None), indent=2))
    else:
        print("\n\n".join(format_stat(s) + ("\n" + format_status(b) if b else "")
                            for s, b in zip(results, bridges)))
    return rc


def cmd_rm(args: argparse.Namespace) -> int:
    rc = 0
    for name in args.names:
        path = _resolve(name, args)
        try:
            tmp = _creation_tmp(path)
        except FileNotFoundError:
            tmp = _core.TMP_NONE  # said below
        if tmp == _core.TMP_CREATING and not args.force:
            print(f"fastq rm: {name}: the temporary file of a creation in progress (not "
                  "removed; --force removes any file)", file=sys.stderr)
            rc = 1
            continue
        if tmp == _core.TMP_LEFTOVER:  # not a segment (yet), but fastq's: removed
            try:
                if _core.tmp_file(path, remove=True) != _core.TMP_LEFTOVER:
                    raise OSError(f"{path} changed: not removed")
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"fastq rm: {name}: {e}", file=sys.stderr)
                rc = 1
            continue
        seg, err = _open_named(name, args)
        if seg is None and not args.force:
            print(f"fastq rm: {err} (not removed; --force removes any file)", file=sys.stderr)
            rc = 1
            continue
        try:
            if seg is not None:
                with seg:
                    seg.unlink()  # the file validated, not one put under its name since
            else:
                os.unlink(path)
        except OSError as e:
            print(f"fastq rm: {name}: {e}", file=sys.stderr)
            rc = 1
    return rc


def _gc(directory: str, remove: bool) -> Iterator[Tuple[str, str, Optional[str]]]:
    """(path, why, error or None) of each file ``fastq gc`` removes (if
    remove; else would remove): a segment marked temporary that no live
    process is attached to, and the temporary file a killed creator left
    (by the core's rule, see _creation_tmp: never by its name alone).  A
    creation in progress, and whatever cannot be read, are left alone.
    Temporary files first, then the segments (opened without the core's
    sweep of a killed creator's second name, see open_segment: a dry run
    lists that name and leaves it)."""
    segments = []
    for path in _files(directory):
        try:
            tmp = _creation_tmp(path)
        except FileNotFoundError:
            continue
        if tmp == _core.TMP_NONE:
            segments.append(path)
        if tmp != _core.TMP_LEFTOVER:
            continue
        why = "the temporary file of a creation whose creator is gone"
        try:
            if remove and _core.tmp_file(path, remove=True) != _core.TMP_LEFTOVER:
                continue  # changed since: judged again by the next gc
        except FileNotFoundError:
            continue
        except OSError as e:
            yield path, why, str(e)
            continue
        yield path, why, None
    for path in segments:
        try:
            seg = open_segment(path)
        except (SegmentError, OSError, ValueError):
            continue
        with seg:
            s = seg.stats()
            if not (s.temporary and s.processes == 0):
                continue
            why = "temporary, no process attached"
            try:
                if remove:
                    seg.unlink()  # the file judged, not one put under its name since
            except OSError as e:
                yield path, why, str(e)
                continue
            yield path, why, None


def cmd_gc(args: argparse.Namespace) -> int:
    rc, found = 0, False
    for path, why, err in _gc(_dir(args), remove=not args.dry_run):
        found = True
        if err is not None:
            print(f"fastq gc: {path}: {err}", file=sys.stderr)
            rc = 1
        else:
            print(f"{'would remove' if args.dry_run else 'removed'} {path}: {why}")
    if not found:
        print(f"nothing to collect in {_dir(args)}")
    return rc


def cmd_check(args: argparse.Namespace) -> int:
    seg, err = _open_named(args.name, args)
    if seg is None:
        print(f"fastq check: {err}", file=sys.stderr)
        return 1
    with seg:
        n, first = seg._check()
        dead = seg.stats().dead_processes
    if n:
        print(f"{args.name}: {n} problem(s); first: {first}")
        return 1
    note = (f" ({dead} slot(s) of dead processes wait for recovery: the next put or get "
            "repairs them)") if dead else ""
    print(f"{args.name}: consistent{note}")
    return 0


# ---- argparse -------------------------------------------------------------


def subcommand(sub: Any, name: str, func: Any, help: str, description: str) -> Any:
    """Add subcommand name (run by func) with its --dir option; the parser."""
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="the directory of segments (default: $FASTQ_DIR, else /dev/shm)")
    p.set_defaults(ops_func=func)
    return p


def add_arguments(sub: Any) -> None:
    """Add ls, stat, rm, gc, check, top and metrics to the ``fastq`` command."""
    p = subcommand(sub, "ls", cmd_ls, "list the segments of a directory",
                   "List every fastq segment in the directory: kind, capacity, depth, ring "
                   "bytes in use, processes alive and dead (slots not yet recovered).")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")

    p = subcommand(sub, "stat", cmd_stat, "every counter of a queue or topic",
                   "Print the counters kept in each named segment (see fastq.Stats): "
                   "traffic, back-pressure, redeliveries, recoveries, per-subscriber lag, "
                   "and Little's-law rates.")
    p.add_argument("names", nargs="+", metavar="NAME", help="a name (in --dir) or a path")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help="print JSON (an object; a list for several names)")
    fmt.add_argument("--prometheus", action="store_true",
                     help="print a Prometheus text exposition (needs prometheus_client)")

    p = subcommand(sub, "rm", cmd_rm, "remove segments",
                   "Remove the named segment files.  Processes attached keep using them "
                   "until they close.  A file that is not a valid segment, or the temporary "
                   "file of a creation in progress, is left alone unless --force; a killed "
                   "creator's temporary file is removed (see fastq gc).")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true", help="remove even what is not a segment")

    p = subcommand(sub, "gc", cmd_gc, "remove temporary segments nobody uses",
                   "Remove, from the directory, the segments created with temporary=True "
                   "that no live process is attached to, and the temporary files "
                   "(<name>.tmp-<pid>-<hex>, filesystems without O_TMPFILE) of creators "
                   "killed before they removed them: told by their header (never completed, "
                   "or the creation their name records), their creator gone and their "
                   "creating lock free, never by the name alone.  Nothing else: a named "
                   "segment without the temporary mark is never removed (use fastq rm), nor "
                   "is a creation in progress.  Anonymous segments have no file: they go "
                   "away by themselves.")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed")

    p = subcommand(sub, "check", cmd_check, "check a segment's consistency (exit 0 or 1)",
                   "Check the cursors and every record in use of a segment; exit 0 if "
                   "consistent, else 1 with what is wrong.  Run it on a quiet segment: "
                   "traffic during the check can look like a problem.")
    p.add_argument("name", metavar="NAME")

    from . import _metrics, _top  # noqa: PLC0415

    _top.add_arguments(sub)
    _metrics.add_arguments(sub)


def main(args: argparse.Namespace) -> int:
    return int(args.ops_func(args))
