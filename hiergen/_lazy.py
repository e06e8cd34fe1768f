"""Lazy public names for a package: the one ``__getattr__`` loader every hiergen package uses.

A package lists which submodule defines each public name; the names are imported on first
access, so ``import hiergen`` (or ``hiergen.models``, ``hiergen.inference``...) loads no heavy
library. Typical ``__init__.py``::

    from typing import TYPE_CHECKING

    from hiergen._lazy import attach

    if TYPE_CHECKING:  # what IDEs and type checkers see
        from hiergen.models.grammar import Grammar as Grammar

    __getattr__, __dir__, __all__ = attach(__name__, {"grammar": ["Grammar"]})

``tests/test_lazy.py`` checks that the ``TYPE_CHECKING`` imports and the table agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def attach(
    package: str,
    exports: Mapping[str, Iterable[str]],
    submodules: Iterable[str] = (),
    extra: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for ``package``.

    Parameters
    ----------
    package : the package's ``__name__``.
    exports : module -> the public names it defines. A module is named absolutely
        (``"hiergen.models.grammar"``) or, without a dot, as a sibling in the same package
        (``"grammar"``: ``hiergen.models.grammar`` when called from ``hiergen.models`` or from
        any module of it).
    submodules : names of submodules that ``package.<name>`` imports on access.
    extra : names defined eagerly in the package itself (e.g. ``__version__``), added to
        ``__all__``.

    A name is imported on first access, then stored in the package (with the other names of
    its module), so later accesses cost nothing. An unknown name raises ``AttributeError`` as
    usual. Avoid exporting a name equal to a submodule's (``experiments.cnn_probe``): importing
    the submodule directly rebinds the package attribute to the module.
    """
    parent = sys.modules[package].__package__ or package
    where: dict[str, str] = {}
    for module, names in exports.items():
        target = module if "." in module else f"{parent}.{module}"
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by two submodules")
            where[name] = target
    subs = frozenset(submodules)
    public = sorted(where) + sorted(extra)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's required name
        if name in where:
            module = importlib.import_module(where[name])
            # bind every name this module exports at once: importing ``pkg.sub`` sets the
            # attribute ``sub`` on ``pkg``, which must not hide an exported name ``sub``
            for other, target in where.items():
                if target == where[name]:
                    setattr(sys.modules[package], other, getattr(module, other))
            return getattr(module, name)
        if name in subs:
            return importlib.import_module(f"{parent}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(public) | subs)

    return __getattr__, __dir__, public
