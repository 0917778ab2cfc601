"""``alzprog bench``: moved out of the library; says where the benchmarks are now.

The benchmarks live in the checkout's top-level ``benchmarks/`` (not installed with the
package, since they start the services): ``make bench`` or ``python -m benchmarks.run`` from the
repository root.
"""

from __future__ import annotations

import argparse
import sys

MESSAGE = ("the benchmarks are not part of the installed library: run `make bench` "
           "(= `python -m benchmarks.run`) from the repository root")


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``bench`` at the top level: it only points at ``make bench``."""
    p = top.add_parser("bench", help="moved: run `make bench` (python -m benchmarks.run) from the checkout",
                       description=MESSAGE, add_help=True)
    # The old options are accepted, so an old command line gets the message, not a usage error.
    for flag in ("--quick", "--no-compile"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--out", "--only", "--repeats", "--workdir"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print(f"error: {MESSAGE}", file=sys.stderr)
    return 2
