"""Every option of ``hiergen`` and of the example scripts says what it is and shows its default.

Walks the whole parser tree of :func:`hiergen.cli.build_parser` (every sub-command,
recursively) and the parser of every ``examples/*.py`` (``build_parser()``), and checks the
formatted help a user reads; and that long-running code keeps a log file free of carriage
returns.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hiergen.cli import HelpFormatter, build_parser, format_default, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every sub-parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each sub-command listed by ``parser``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                out[choice.dest] = choice.help or ""
    return out


def _trivial(default: object) -> bool:
    return default is None or default is False or default is argparse.SUPPRESS


def _squash(text: str) -> str:
    """``text`` without any whitespace (help wraps lines, also at hyphens)."""
    return "".join(text.split())


def _problems(parser: argparse.ArgumentParser, where: str) -> list[str]:
    """What is wrong with the help of ``parser``'s own options (not its sub-parsers')."""
    problems = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = formatter._expand_help(action) if action.help else ""
        low = text.lower()
        if not text.strip() or text.lstrip().startswith("(default"):
            problems.append(f"{where} {name}: no help text")
            continue
        if low.count("(default") > 1:
            problems.append(f"{where} {name}: default shown twice: {text!r}")
        if "default: none" in low or "default none" in low:
            problems.append(f"{where} {name}: shows 'default: None': {text!r}")
        if _trivial(action.default) or not action.option_strings or action.nargs == 0:
            continue
        shown = format_default(action.default)
        if "default" not in low:
            problems.append(f"{where} {name}: default {shown!r} not shown: {text!r}")
        elif _squash(shown).lower() not in _squash(low[low.index("default"):]):
            problems.append(f"{where} {name}: help states another default than {shown!r}: {text!r}")
        elif _squash(shown) not in _squash(parser.format_help()):
            problems.append(f"{where} {name}: default {shown!r} missing from format_help()")
    return problems


def _all_parsers() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(_walk(build_parser()))


def _commands() -> list[tuple[str, ...]]:
    return [path for path, _ in _all_parsers()]


# ----------------------------------------------------------------------------- hiergen CLI


def test_the_walk_finds_nested_commands():
    paths = set(_commands())
    for path in [(), ("demo",), ("forward-backward",), ("grammar", "info"), ("grammar", "convert"),
                 ("imagenet", "forward-backward"), ("imagenet", "probe"), ("imagenet", "plot"),
                 ("imagenet", "train-digits"), ("bench", "bp"), ("sample",), ("compare",),
                 ("meanfield",)]:
        assert path in paths


def test_every_cli_option_has_help_with_its_default():
    problems = []
    for path, parser in _all_parsers():
        where = " ".join(("hiergen", *path))
        problems += _problems(parser, where)
        for name, text in _subcommand_help(parser).items():
            if not text.strip():
                problems.append(f"{where} {name}: sub-command without help")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "hiergen")
def test_help_exits_zero(path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hiergen")
    assert "default: None" not in out


def test_the_check_catches_missing_help_and_wrong_defaults():
    """The checker is not vacuous: it reports an option without help, a hand-written default
    that disagrees with the real one, and a default shown twice."""
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--v", type=int, default=32)
    p.add_argument("--n", type=int, default=5, help="number of samples (default 8)")
    p.add_argument("--k", type=int, default=3, help="count (default: %(default)s) (default 3)")
    p.add_argument("--ok", type=int, default=4, help="rules per symbol")
    p.add_argument("--flag", action="store_true", help="a flag")
    problems = _problems(p, "x")
    assert any("--v: no help" in s for s in problems)
    assert any("--n: help states another default" in s for s in problems)
    assert any("--k: default shown twice" in s for s in problems)
    assert not any("--ok" in s or "--flag" in s for s in problems)


def test_formatter_shows_defaults_as_typed():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--depths", nargs="+", type=int, default=[2, 4, 6], help="depths L")
    p.add_argument("--out", type=Path, default=Path("out/x"), help="output folder")
    p.add_argument("--frac", type=float, default=0.5, help="fraction in %% of nothing")
    p.add_argument("--name", default=None, help="a name")
    text = " ".join(p.format_help().split())
    assert "depths L (default: 2 4 6)" in text
    assert "output folder (default: out/x)" in text
    assert "fraction in % of nothing (default: 0.5)" in text
    assert "a name --" not in text and "default: None" not in text


@pytest.mark.parametrize(("argv", "flag"), [
    (["demo", "--backend", "nmupy"], "--backend"),
    (["forward-backward", "--out", "x", "--backend", "jaxx"], "--backend"),
    (["forward-backward", "--out", "x", "--noise", "gauss"], "--noise"),
    (["bench", "bp", "--dtype", "float16"], "--dtype"),
    (["imagenet", "forward-backward", "--out", "x", "--dtype", "fp16"], "--dtype"),
])
def test_typos_in_fixed_choices_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice" in err


# ------------------------------------------------------------------------ example scripts


def _load_example(path: Path):
    spec = importlib.util.spec_from_file_location(f"{path.stem}_help_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_options_have_help_with_defaults(path):
    module = _load_example(path)
    assert hasattr(module, "build_parser"), f"{path.name}: no build_parser()"
    parser = module.build_parser()
    assert parser.description
    problems = _problems(parser, path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_help_exits_zero(path):
    module = _load_example(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert out.getvalue().startswith("usage:")
    assert "--out" in out.getvalue()


# ----------------------------------------------------------------- progress in a log file


def test_sweep_progress_in_a_log_file_has_no_carriage_returns(tmp_path):
    """``hiergen forward-backward`` with stderr redirected to a file: a progress line (plain,
    no ``\\r`` redraws) and a finished sweep."""
    log = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "hiergen", "forward-backward", "--out", str(tmp_path / "run"),
           "--v", "4", "--n-classes", "2", "--m", "2", "--depths", "2", "--times", "0:1:3",
           "--noise", "uniform", "--n-samples", "20", "--no-plots"]
    with open(log, "w") as fh:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, timeout=300)
    raw = log.read_bytes()  # read_text() would turn "\r" into "\n"
    text = raw.decode()
    assert res.returncode == 0, text
    assert b"\r" not in raw, text
    lines = [ln for ln in text.splitlines() if ln.startswith("forward-backward")]
    assert lines, text
    assert "3/3" in lines[-1]
    assert "points computed: 3" in res.stdout


@pytest.mark.slow
def test_example_progress_in_a_log_file_has_no_carriage_returns(tmp_path):
    """An example script run with stderr redirected to a file: plain progress lines."""
    log = tmp_path / "stderr.log"
    cmd = [sys.executable, str(ROOT / "examples" / "meanfield_vs_bp.py"), "--out",
           str(tmp_path / "out"), "--v", "4", "--m", "2", "--depths", "2", "3", "--eps", "0.1,0.5",
           "--times", "100,200", "--n-samples", "20", "--seeds", "0"]
    with open(log, "w") as fh:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, timeout=300)
    raw = log.read_bytes()
    assert res.returncode == 0, raw.decode()
    assert b"\r" not in raw, raw.decode()
    lines = [ln for ln in raw.decode().splitlines() if ln.startswith("depths")]
    assert lines and "2/2" in lines[-1]
    assert (tmp_path / "out" / "meanfield_vs_bp.nc").is_file()
