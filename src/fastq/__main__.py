"""Command line: ``python -m fastq`` (also the ``fastq`` console script):
``bench``, ``bridge``, and the operations tools ``ls``, ``stat``, ``rm``,
``gc``, ``check`` (fastq._ops); ``fastq --version`` prints the version."""

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
    _add_bridge(sub)
    from fastq import _ops  # noqa: PLC0415

    _ops.add_arguments(sub)
    args = parser.parse_args(argv)
    if getattr(args, "ops_func", None) is not None:
        return _ops.main(args)
    if args.command == "bridge":
        from fastq import _bridge_cli  # noqa: PLC0415

        return _bridge_cli.main(args)
    return bench.main(args)


def _add_bridge(sub) -> None:
    """``fastq bridge``: local queues and topics to and from NATS JetStream."""
    from fastq import _bridge_cli  # noqa: PLC0415 - imports nats only when run

    _bridge_cli.add_arguments(sub.add_parser(
        "bridge", help="bridge local queues and topics to NATS JetStream (fastq.bridge)",
        description=_bridge_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


if __name__ == "__main__":
    sys.exit(main())
