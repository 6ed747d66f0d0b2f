"""Pools and pipelines: fastq against multiprocessing and its peers, as in ``fastq bench --workloads pool,pipeline``.

Each track runs fastq's program and one peer's in the same asv process (each in
its own interpreter under a hard timeout, results checked: ``fastq.bench.programs``)
and reports the ratio fastq / peer of one figure (items/s, MB/s, or apply() latency
in microseconds, where lower is better).  A peer that is not installed is skipped;
a run that fails its checks or hangs fails the track.  Sizes are those of
``fastq bench --quick`` (100k small items).
"""

from fastq.bench import Settings, programs

CFG = Settings.quick()
PROGRAMS = {p.name: p for p in programs.select(["pool", "pipeline"], CFG)}
CASES = programs.ratio_cases(PROGRAMS, skip=("pool-kill",))


class FastqOverPeer:
    """fastq's figure / the peer's, both measured in this asv process."""

    params = (CASES,)
    param_names = ["workload | figure | peer"]
    timeout = 300

    def track_ratio(self, case):
        return programs.case_ratio(PROGRAMS, case)

    track_ratio.unit = "x"


class PoolKill:
    """``x + 1`` rounds on a fastq.Pool while a worker is SIGKILLed every 0.5 s: every result exactly once
    (else the track fails); tracks the batches run again."""

    timeout = 120

    def track_fastq_reruns(self):
        prog = PROGRAMS["pool-kill"]
        return programs.checked(programs.run_one(prog.name, prog.fastq)).figures["reruns"]

    track_fastq_reruns.unit = "re-runs"
