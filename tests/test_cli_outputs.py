"""Bad output paths give ``hiergen: error: ...`` and exit status 2, never a traceback.

Run as root, ``chmod`` cannot make a folder unwritable, so the unwritable folders here are
paths below an existing *file*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiergen.cli import main
from hiergen.models.serialize import load_grammar

FB = ["--v", "8", "--n-classes", "4", "--m", "2", "--s", "2", "--depths", "2", "--times", "0,100",
      "--n-samples", "20", "--no-progress", "--no-plots"]


def _cases(f: Path, folder_json: Path, src: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, the path the message must name)."""
    return {
        "sample-out-is-file": (["sample", "--out", str(f)], str(f)),
        "sample-out-below-file": (["sample", "--out", str(f / "sub")], str(f)),
        "fb-out-is-file": (["forward-backward", *FB, "--out", str(f)], str(f)),
        "fb-out-below-file": (["forward-backward", *FB, "--out", str(f / "sub")], str(f)),
        "demo-out-is-file": (["demo", "--quick", "--no-progress", "--out", str(f)], str(f)),
        "demo-out-below-file": (["demo", "--quick", "--no-progress", "--out", str(f / "a" / "b")], str(f)),
        "convert-dst-below-file": (["grammar", "convert", str(src), str(f / "g.yaml")], str(f)),
        "convert-dst-is-folder": (["grammar", "convert", str(src), str(folder_json)], str(folder_json)),
    }


CASES = sorted(_cases(Path("f"), Path("d"), Path("s")))  # the names only


@pytest.mark.parametrize("case", CASES)
def test_bad_output_path_is_a_clean_error(tmp_path, capsys, case):
    f = tmp_path / "a_file"
    f.write_text("not a folder\n")
    folder_json = tmp_path / "folder.json"
    folder_json.mkdir()
    src = tmp_path / "g.json"
    assert main(["sample", "--n", "1", "--no-draw", "--out", str(tmp_path / "ok")]) == 0
    src.write_bytes((tmp_path / "ok" / "grammar.json").read_bytes())
    capsys.readouterr()
    argv, named = _cases(f, folder_json, src)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiergen: error: "), err
    assert named in err and "Traceback" not in err
    # nothing was written over or beside the file
    assert f.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder.json", "g.json", "ok"]


def test_good_output_paths_still_work(tmp_path, capsys):
    src = tmp_path / "s" / "grammar.json"
    assert main(["sample", "--n", "2", "--format", "npz", "--no-draw", "--out", str(src.parent)]) == 0
    dst = tmp_path / "new" / "deeper" / "g.yaml"
    assert main(["grammar", "convert", str(src), str(dst)]) == 0
    assert main(["grammar", "convert", str(dst), str(tmp_path / "back.json")]) == 0
    assert load_grammar(tmp_path / "back.json") == load_grammar(src)
    # no temporary files left behind by the atomic writes
    assert not list(tmp_path.rglob("*.tmp"))
    with np.load(src.parent / "samples.npz") as z:
        assert z["leaves"].shape == (2, 8)
