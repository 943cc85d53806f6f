"""The `editdecay` command: a thin layer that parses arguments and calls the Python API.

Each subcommand lives in ``editdecay/commands/<name>.py`` with ``add_parser(subparsers)`` and ``run(args)``;
heavy libraries are imported only inside ``run`` so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from editdecay import __version__
from editdecay.errors import EditDecayError

COMMANDS = ("models", "data", "edit", "evaluate", "compare", "finetune", "plan", "run", "status", "report", "analyze",
            "export", "erase", "inspect-edits")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editdecay",
        description="Edit a model (MEMIT, AlphaEdit), fine-tune it (full, LoRA, DoRA) and measure which edits survive.",
    )
    parser.add_argument("--version", action="version", version=f"editdecay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"editdecay.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"editdecay.commands.{name.replace('-', '_')}":
                continue  # a stage whose package is not present in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except EditDecayError as exc:
        print(f"editdecay {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"editdecay {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
