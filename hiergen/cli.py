"""The ``hiergen`` command line.

Each sub-command lives in its own module under :mod:`hiergen.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code). Heavy imports happen inside the
handlers, so ``hiergen --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from hiergen import __version__
from hiergen.models.errors import HiergenError


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose help
    does not state its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The parser class of ``hiergen`` and every sub-command (they inherit the formatter)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every sub-command module found in :mod:`hiergen.commands`."""
    parser = _Parser(
        prog="hiergen",
        description="Hierarchical generative grammars and exact inference on them.",
    )
    parser.add_argument("--version", action="version", version=f"hiergen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import hiergen.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"hiergen.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hiergen`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HiergenError as exc:
        print(f"hiergen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hiergen: interrupted (finished results are kept on disk)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
