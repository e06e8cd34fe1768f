"""Shared checks of user-supplied settings; the caller chooses which hiergen error to raise.

One integer check serves the grammar (:class:`~hiergen.models.errors.GrammarError`), the theory
and the backends (:class:`~hiergen.models.errors.ConfigError`)::

    n = check_int(n, "n_samples", 1)                       # ConfigError
    v = check_int(v, "v", 2, error=GrammarError)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import ConfigError, HiergenError


def check_int(
    value: Any,
    name: str,
    minimum: int | None = None,
    *,
    error: type[HiergenError] = ConfigError,
) -> int:
    """``value`` as a Python int, or ``error`` naming ``name`` if it is no integer >= minimum.

    Python and NumPy integers pass; ``bool``, floats (even ``3.0``), strings and anything else
    are refused, so a setting is never silently truncated.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            raise error(f"{name} must be an integer, got the float {value!r}")
        raise error(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    return int(value)
