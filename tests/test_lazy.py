"""The lazy public names of hiergen's packages (hiergen._lazy.attach): ``import hiergen`` loads no
heavy library, every public name resolves to the object its module defines, and the
``if TYPE_CHECKING:`` imports that IDEs see list exactly the lazy names."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

from hiergen._lazy import attach

HEAVY = ["torch", "jax", "jaxlib", "numpyro", "funsor", "pgmpy", "diffusers", "timm", "numba",
         "arviz", "sklearn", "PIL", "safetensors", "scipy", "matplotlib", "xarray", "pandas",
         "networkx", "h5py", "h5netcdf", "tqdm", "filelock"]

# package -> whether all its names are lazy (hiergen.inference.meanfield re-exports three)
LAZY_MODULES = ["hiergen", "hiergen.models", "hiergen.inference", "hiergen.experiments",
                "hiergen.imagenet", "hiergen.inference.meanfield"]


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_importing_the_packages_loads_no_heavy_library():
    loaded = _loaded_after("import hiergen, hiergen.models, hiergen.inference, "
                           "hiergen.experiments, hiergen.imagenet")
    assert "hiergen" in loaded  # the probe ran
    assert [m for m in HEAVY + ["numpy"] if m in loaded] == []


def test_main_names_load_only_numpy():
    loaded = _loaded_after("from hiergen import RHM, BeliefPropagation, GrammarError")
    assert "numpy" in loaded
    assert [m for m in HEAVY if m in loaded] == []


def _type_checking_imports(module: types.ModuleType) -> dict[str, str]:
    """name -> module of every ``from M import N as N`` under ``if TYPE_CHECKING:``."""
    tree = ast.parse(open(module.__file__).read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.dump(imp)
                for alias in imp.names:
                    assert alias.asname == alias.name, f"write `import {alias.name} as {alias.name}`"
                    found[alias.name] = imp.module
    return found


@pytest.mark.parametrize("name", LAZY_MODULES)
def test_lazy_names_match_the_type_checking_imports(name):
    module = importlib.import_module(name)
    seen = _type_checking_imports(module)
    lazy = set(module.__all__) - {"__version__"}
    if name == "hiergen.inference.meanfield":
        lazy = {"Simulation", "bp_reconstruction", "crossing"}
    assert set(seen) == lazy
    for public, source in seen.items():
        if public in CLASHES.get(name, ()):
            continue
        assert getattr(module, public) is getattr(importlib.import_module(source), public)
    assert set(module.__all__) <= set(dir(module))


# public names equal to a submodule's name: ``import hiergen.experiments.cnn_probe`` anywhere
# rebinds ``hiergen.experiments.cnn_probe`` to the module (to be renamed; see issue 16)
CLASHES = {"hiergen.experiments": {"cnn_probe"}}


@pytest.mark.parametrize("name", LAZY_MODULES)
def test_no_public_name_is_also_a_submodule(name):
    module = importlib.import_module(name)
    if not hasattr(module, "__path__"):
        return
    subs = {m.name for m in pkgutil.iter_modules(module.__path__)}
    assert set(module.__all__) & subs == CLASHES.get(name, set())


def test_a_name_named_like_its_submodule_resolves_on_first_access():
    loaded = subprocess.run(
        [sys.executable, "-c", "from hiergen.experiments import train_cnn, cnn_probe; "
         "print(callable(cnn_probe), type(cnn_probe).__name__)"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["True", "function"]


def test_old_import_paths_still_work():
    from hiergen.inference import meanfield, meanfield_sim, meanfield_vi, numpyro_backend

    assert meanfield.bp_reconstruction is meanfield_sim.bp_reconstruction
    assert meanfield.crossing is meanfield_sim.crossing
    assert meanfield.Simulation is meanfield_sim.Simulation
    assert numpyro_backend.MeanFieldVI is meanfield_vi.MeanFieldVI
    assert numpyro_backend.LOG_FLOOR == meanfield_vi.LOG_FLOOR == -1000.0
    from hiergen.inference.registry import get_backend
    from hiergen.models.rhm import RHM

    assert type(get_backend("meanfield-vi", RHM(3, 2, 2, 2, 2, seed=0))) is meanfield_vi.MeanFieldVI


def test_attach_errors_and_dir():
    mod = types.ModuleType("hiergen_fake_pkg")
    sys.modules[mod.__name__] = mod
    try:
        get, names, public = attach(mod.__name__, {"hiergen.models.errors": ["ConfigError"]},
                                    submodules=["sub"], extra=["VERSION"])
        mod.__getattr__ = get
        from hiergen.models.errors import ConfigError

        assert mod.ConfigError is ConfigError and vars(mod)["ConfigError"] is ConfigError
        assert public == ["ConfigError", "VERSION"] and names() == ["ConfigError", "VERSION", "sub"]
        with pytest.raises(AttributeError, match="module 'hiergen_fake_pkg' has no attribute 'nope'"):
            mod.nope  # noqa: B018
        with pytest.raises(ValueError, match="'X' is exported by two submodules"):
            attach(mod.__name__, {"a.b": ["X"], "a.c": ["X"]})
    finally:
        del sys.modules[mod.__name__]
