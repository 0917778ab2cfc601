"""The ``alzprog`` command line: a thin shell over the library.

Each command family lives in its own module under ``alzprog.cli`` and exposes
``register(groups, top)``: ``groups`` maps the group names ``data``, ``train`` and
``evaluate`` to their sub-parser collections, ``top`` is the top-level collection.
Handlers import heavy libraries (torch, mlflow) lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute commands; a missing one is skipped so a partial install still runs.
COMMAND_MODULES = (
    "alzprog.cli.dataset",  # data index, data split, eda
    "alzprog.cli.synth",  # data synth
    "alzprog.cli.classifier",  # train classifier, evaluate classifier, explain
    "alzprog.cli.progression",  # train progression, evaluate progression, progress
    "alzprog.cli.serving",  # bootstrap
    "alzprog.cli.bench",  # bench
    "alzprog.cli.predict",  # predict (batch scoring)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alzprog",
        description="Alzheimer's MRI staging and progression synthesis (data, training, evaluation, serving).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in (
        ("data", "index, split and synthesise datasets"),
        ("train", "train the stage classifier or the progression generators"),
        ("evaluate", "evaluate registered models on held-out test subjects"),
    ):
        p = top.add_parser(name, help=help_text)
        groups[name] = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        p.set_defaults(func=lambda args, p=p: (p.print_help(), 2)[1])
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(groups, top)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
