"""The `optimlab` command line: one sub-command per job.

Each sub-command lives in `optimlab.commands.<name>` (found automatically) and exposes
`ORDER` (its place in `--help`) and `register(subparsers)`, which adds its parser and sets
`run` (a function of the parsed arguments returning an exit code). Those modules import
heavy libraries only inside `run`, so `--help` stays instant.

Failures become one line on stderr: exit 2 for usage errors, 1 for runtime errors (a file
system error included: disk full, permissions), 130 for Ctrl-C. `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from optimlab import __version__
from optimlab.errors import OptimlabError, interrupted


def _command_modules() -> list:
    import optimlab.commands as package

    modules = [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.ORDER)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="optimlab",
        description="A laboratory for PyTorch optimizers.",
    )
    parser.add_argument("--version", action="version", version=f"optimlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=ArgumentParser
    )
    for module in _command_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while starting: nothing has run yet
        print("\noptimlab: interrupted before starting", file=sys.stderr)
        return 130
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except OptimlabError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"optimlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused mid-run (disk full, permissions, ...)
        if interrupted(exc):
            return _interrupted(args)
        if args.debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(
            f"optimlab {args.command}: error: {exc.strerror or exc}{where}; free space or fix "
            "the permissions, then rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return _interrupted(args)


def _interrupted(args) -> int:
    print(
        f"\noptimlab {args.command}: interrupted; rerun the same command to resume.",
        file=sys.stderr,
    )
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
