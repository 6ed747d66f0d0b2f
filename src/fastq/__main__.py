"""Command line: ``python -m fastq bench`` (also the ``fastq`` console script);
``fastq --version`` prints the version."""

import argparse
import sys


def main(argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code."""
    from fastq import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="fastq", description="fastq command line tools")
    parser.add_argument("--version", action="version", version=f"fastq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_parser = sub.add_parser("bench", help="benchmark fastq side by side with other IPC queues")
    from fastq import bench  # noqa: PLC0415 - argparse needs the options; bench imports nothing heavy

    bench.add_arguments(bench_parser)
    args = parser.parse_args(argv)
    return bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
