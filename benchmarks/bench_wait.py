"""Waiting (issue #12): awaited ping-pong and throughput, the idle CPU of a blocked consumer, and
blocking ping-pong per wait strategy, as in ``fastq bench --workloads async,idle-wait,pingpong-wait``.

Each track runs fastq's program and one peer's in the same asv process (each in its own
interpreter under a hard timeout, replies and counts checked: ``fastq.bench.programs``) and
reports the ratio fastq / peer of one figure (round-trip percentiles and idle CPU, where lower
is better; msgs/s, where higher is).  A peer that is not installed is skipped.  Sizes are those
of ``fastq bench --quick``.
"""

from fastq.bench import Settings, programs, wait

CFG = Settings.quick()
PROGRAMS = {p.name: p for p in programs.select(list(wait.NAMES), CFG)}
CASES = programs.ratio_cases(PROGRAMS, skip=())


class FastqOverPeer:
    """fastq's figure / the peer's, both measured in this asv process."""

    params = (CASES,)
    param_names = ["workload | figure | peer"]
    timeout = 300

    def track_ratio(self, case):
        return programs.case_ratio(PROGRAMS, case)

    track_ratio.unit = "x"


class SpinTail:
    """fastq ``wait="spin"`` ping-pong p99 over the polling floor's (two processes spinning on a
    shared counter), both measured now: issue #12 asks for at most 1x."""

    timeout = 300

    def track_spin_p99_over_polling(self):
        prog = PROGRAMS["pingpong-wait-8B"]
        spin = next(r for r in prog.peers if r.label == 'fastq wait="spin"')
        floor = next(r for r in prog.peers if r.label.startswith("polling floor"))
        ours = programs.checked(programs.run_one(prog.name, spin))
        theirs = programs.checked(programs.run_one(prog.name, floor))
        return programs.ratio(ours, theirs, "p99_us")

    track_spin_p99_over_polling.unit = "x"
