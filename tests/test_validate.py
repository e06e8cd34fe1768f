"""hiergen.models._validate.check_int: the one integer check, raising the caller's error class."""

from __future__ import annotations

import numpy as np
import pytest

from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError, GrammarError


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
