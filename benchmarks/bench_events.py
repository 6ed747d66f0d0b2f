"""Event-driven programs: fastq.rpc and fastq.Dispatcher against their peers, as in
``fastq bench --workloads rpc,dispatch``.

Each track runs fastq's program and one peer's in the same asv process (each in its
own interpreter under a hard timeout, results checked: ``fastq.bench.programs``) and
reports the ratio fastq / peer of one figure (call latency in microseconds, where
lower is better; calls/s and items/s, where higher is).  A peer that is not installed
is skipped.  Sizes are those of ``fastq bench --quick``.
"""

from fastq.bench import Settings, programs

CFG = Settings.quick()
PROGRAMS = {p.name: p for p in programs.select(["rpc", "dispatch"], CFG)}
CASES = programs.ratio_cases(PROGRAMS, skip=())


class FastqOverPeer:
    """fastq's figure / the peer's, both measured in this asv process."""

    params = (CASES,)
    param_names = ["workload | figure | peer"]
    timeout = 300

    def track_ratio(self, case):
        return programs.case_ratio(PROGRAMS, case)

    track_ratio.unit = "x"
