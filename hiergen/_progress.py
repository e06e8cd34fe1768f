"""Progress bars that stay readable when the output goes to a file.

On a terminal this is an ordinary ``tqdm`` bar. When standard error is not a terminal (a log
file, a pipe, CI), the bar is written as one plain line per update at most every
``LOG_INTERVAL`` seconds (plus the first and the last), instead of carriage-return redraws
that turn a log into one unreadable line.
"""

from __future__ import annotations

import io
import sys
from typing import Any

#: seconds between two progress lines when writing to a file
LOG_INTERVAL = 10.0


class _LineWriter(io.TextIOBase):
    """Turns tqdm's ``\\r``-redraws into whole lines."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` progress bar over ``iterable`` (or with ``total=``), disabled when not
    ``enabled``; keyword arguments go to tqdm (``total``, ``desc``, ``unit``, ``initial``...)."""
    from tqdm.auto import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    if interactive:
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, disable=not enabled, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("maxinterval", LOG_INTERVAL * 3)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, disable=not enabled, file=_LineWriter(stream), ascii=True, **kwargs)
