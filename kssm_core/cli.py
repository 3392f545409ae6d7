"""The headless `kssm` command: a thin dispatcher over kssm_core.commands.*."""

from __future__ import annotations

import argparse
import importlib
import sys

from kssm_core import __version__

# Each module has register(subparsers) which adds its parser and sets `func` (args -> exit code).
COMMAND_MODULES = (
    "kssm_core.commands.train",
    "kssm_core.commands.data",
    "kssm_core.commands.unlock",
    "kssm_core.commands.clean",
    "kssm_core.commands.status",
    "kssm_core.commands.eval",
    "kssm_core.commands.export",
    "kssm_core.commands.report",
    "kssm_core.commands.autopilot",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kssm", description="Train and judge K-SSM v3 language models, stage by stage.")
    parser.add_argument("--version", action="version", version=f"kssm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
