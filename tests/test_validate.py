"""hiergen.models._validate.check_int: the one integer check, raising the caller's error class."""

from __future__ import annotations

import numpy as np
import pytest

from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError, GrammarError, SizeLimitError


def test_integers_pass_as_python_ints():
    for value in (3, np.int64(3), np.uint8(3)):
        out = check_int(value, "n", 1)
        assert out == 3 and type(out) is int
    assert check_int(-5, "offset") == -5  # no minimum


@pytest.mark.parametrize("value,msg", [
    (True, r"n must be an integer, got True \(bool\)"),
    (2.0, "n must be an integer, got the float 2.0"),
    (np.float32(2.5), r"n must be an integer, got .*2\.5.* \(float32\)"),
    ("2", r"n must be an integer, got '2' \(str\)"),
    (None, r"n must be an integer, got None \(NoneType\)"),
    (0, "n must be >= 1, got 0"),
])
def test_bad_values_name_the_setting(value, msg):
    with pytest.raises(ConfigError, match=msg):
        check_int(value, "n", 1)
    with pytest.raises(GrammarError, match=msg):
        check_int(value, "n", 1, error=GrammarError)


@pytest.mark.parametrize(("params", "error", "match"), [
    ([4, 2], GrammarError, "must be a mapping"),
    ({"v": 4, "m": 2, "s": 2, "L": 2}, GrammarError, r"missing \['n_classes'\], unknown \[\]"),
    ({"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 2, "seed": 0}, GrammarError, r"unknown \['seed'\]"),
    ({"v": 4, "n_classes": 2, "m": 0, "s": 2, "L": 2}, GrammarError, "RHM m must be >= 1"),
    ({"v": 4, "n_classes": 2, "m": 2.0, "s": 2, "L": 2}, GrammarError, "RHM m must be an integer"),
    ({"v": 4, "n_classes": 2, "m": 9, "s": 2, "L": 2}, GrammarError, "infeasible RHM"),
    ({"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 10**6}, SizeLimitError, "MAX_DEPTH"),
])
def test_check_rhm_params(params, error, match):
    from hiergen.models.rhm import check_rhm_params

    with pytest.raises(error, match=match):
        check_rhm_params(params)


def test_check_rhm_params_error_type_and_subset():
    from hiergen.models.rhm import check_rhm_params

    assert check_rhm_params({"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 3}) == {
        "v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 3}
    keys = ("v", "n_classes", "m", "s")
    assert check_rhm_params({"v": 4, "n_classes": 2, "m": 2, "s": 2}, keys) == {
        "v": 4, "n_classes": 2, "m": 2, "s": 2}
    with pytest.raises(ConfigError, match=r"rhm_params parameters need exactly.*unknown \['L'\]"):
        check_rhm_params({"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 3}, keys,
                         label="rhm_params", error=ConfigError)
