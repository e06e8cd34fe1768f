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


def format_default(default: object) -> str:
    """A default value as a user would type it: lists space-separated, paths as paths."""
    if isinstance(default, (list, tuple)):
        return " ".join(str(x) for x in default)
    return str(default)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose help does not state its default already.

    Nothing is appended for flags (``store_true``), positionals, and defaults that mean "not
    given" (``None``, ``False``, ``SUPPRESS``). Lists are shown as typed (``2 4 6``). Used by
    ``hiergen`` and its sub-commands and by the example scripts in ``examples/``.
    """

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
        shown = format_default(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap at spaces only: paths and names like ``hiergen-out/demo`` stay whole."""
        import textwrap

        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False)


#: the former private name
_HelpFormatter = HelpFormatter


class _Parser(argparse.ArgumentParser):
    """The parser class of ``hiergen`` and every sub-command (they inherit the formatter)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", HelpFormatter)
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
