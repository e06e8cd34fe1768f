"""Every third-party module the package imports is declared in pyproject.toml, and every
declared dependency is imported somewhere (nothing declared for nothing)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ["hiergen", "models", "inference", "imagenet"]
# declared on purpose although no module imports them by name
USED_WITHOUT_IMPORT = {
    "hiergen": set(),
    # h5netcdf is xarray's engine="h5netcdf" and needs h5py, which it no longer pulls itself
    "h5netcdf": "xarray engine",
    "h5py": "backend of h5netcdf",
    # timm models and diffusers import torchvision themselves; funsor is numpyro's enumeration
    "funsor": "numpyro.contrib.funsor",
    "torchvision": "pulled by timm; pinned to torch's pair",
    "pytest": "test runner",
    "ruff": "linter run by tests/test_lint.py",
    "hypothesis": "property tests",
    # guided_diffusion's dist_util / image_datasets import it (the reference code of
    # tests/test_imagenet_guided.py); guided-diffusion-sdk itself requires it as well
    "blobfile": "used by guided_diffusion (test-only reference code)",
    # a program, not a module: the mpirun of `accelerate launch --cpu --num_processes N`
    "mpich": "mpirun for tests/test_imagenet_distributed.py",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, str]:
    """Distribution name -> where it is declared (core or extra name)."""
    proj = _pyproject()["project"]
    out = {_name(r): "core" for r in proj["dependencies"]}
    for extra, reqs in proj["optional-dependencies"].items():
        for r in reqs:
            out.setdefault(_name(r), extra)
    return out


def imported_modules(dirs: list[str]) -> dict[str, str]:
    """Top-level module name -> first file importing it (absolute imports only)."""
    found: dict[str, str] = {}
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return found


def third_party(mods: dict[str, str]) -> dict[str, str]:
    return {
        m: f for m, f in mods.items()
        if m not in sys.stdlib_module_names and m not in {"hiergen", "conftest", "__future__"}
    }


def test_every_imported_module_is_declared() -> None:
    dists = packages_distributions()
    decl = declared()
    missing = []
    for mod, where in sorted(third_party(imported_modules(PACKAGE_DIRS)).items()):
        names = [n.lower().replace("_", "-") for n in dists.get(mod, [mod])]
        if not any(n in decl for n in names):
            missing.append(f"{mod} (imported in {where}; distribution {names})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_every_declared_dependency_is_used() -> None:
    dists = packages_distributions()
    used_dists = set()
    mods = third_party(imported_modules(PACKAGE_DIRS + ["tests", "examples"]))
    for mod in mods:
        used_dists.update(n.lower().replace("_", "-") for n in dists.get(mod, [mod]))
    unused = [d for d in declared() if d not in used_dists and d not in USED_WITHOUT_IMPORT]
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_h5netcdf_engine_has_h5py() -> None:
    """xarray's h5netcdf engine needs h5py, which h5netcdf >= 1.8 makes optional."""
    decl = declared()
    assert decl.get("h5py") == "core"
    import h5py  # noqa: F401  (a core dependency: must be installed)
