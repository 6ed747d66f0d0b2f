"""multiprocessing.Pool code moved to fastq.Pool: three lines change (marked).

What changes for the program: no chunksize to tune (fastq batches adaptively),
a worker that dies is replaced and its item run again instead of a hang, and the
input of imap is read lazily, a bounded window ahead.

    python examples/pool_instead_of_multiprocessing.py [N]
"""
import sys

import fastq                                   # 1. was: import multiprocessing


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with fastq.Pool(2) as pool:                # 2. was: multiprocessing.Pool(2)
        steps = pool.imap(collatz_steps, range(1, n + 1))  # 3. was: chunksize=1024
        best = max(zip(steps, range(1, n + 1)))
    print(f"below {n + 1}, {best[1]} takes the most steps: {best[0]}")
