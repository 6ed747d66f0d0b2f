"""A two-stage CPU pipeline: count primes below each number (stage 1, three workers),
then format a report line (stage 2, one worker).  Items go from stage to stage
through fastq queues, never through the parent; output keeps input order.

    python examples/two_stage_pipeline.py [N]
"""
import sys

import fastq


def count_primes(n):
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"[:n]
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n, i)))
    return n, sum(sieve)


def report(pair):
    n, count = pair
    return f"{count:6d} primes below {n}"


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with fastq.pipeline(range(1000, 1000 + 1000 * n, 1000),
                        fastq.Stage(count_primes, workers=3),
                        fastq.Stage(report)) as lines:
        last = None
        for last in lines:
            pass
    print(last)
