"""Image folders, labels files, subsets, provenance PNGs and sharding."""

from __future__ import annotations

import numpy as np
import pytest

from hiergen.imagenet.data import (
    load_image,
    read_provenance,
    save_png,
    scan_images,
    shard,
    subset_per_class,
)
from hiergen.models.errors import ConfigError


def _img(path, value=0.0, size=(12, 10), channels=3):
    arr = np.full((channels, size[1], size[0]), value, dtype=np.float32)
    save_png(arr, path)


def test_class_folders_labels_and_subsets(tmp_path):
    for c, name in enumerate(["n01", "n02", "n03"]):
        for i in range(5):
            _img(tmp_path / name / f"im{i}.png", value=c / 3)
    recs = scan_images(tmp_path)
    assert len(recs) == 15
    assert {r.label for r in recs if r.class_name == "n02"} == {1}
    assert recs[0].id == "n01/im0" and recs[0].safe_id == "n01__im0"
    sub = scan_images(tmp_path, n_per_class=2, seed=3)
    assert len(sub) == 6 and sub == scan_images(tmp_path, n_per_class=2, seed=3)
    assert [sum(r.label == c for r in sub) for c in range(3)] == [2, 2, 2]
    other = subset_per_class(recs, 2, seed=4)
    assert len(other) == 6
    with pytest.raises(ConfigError, match="n_per_class"):
        subset_per_class(recs, 0)


def test_ilsvrc_flat_layout_with_labels(tmp_path):
    lab = tmp_path.parent / (tmp_path.name + "_labels")
    lab.mkdir(exist_ok=True)
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    from PIL import Image

    for n in names:
        Image.new("RGB", (20, 16), (100, 50, 25)).save(tmp_path / n, format="JPEG")
    (lab / "pairs.txt").write_text("\n".join(f"{n} {i + 7}" for i, n in enumerate(names)))
    recs = scan_images(tmp_path, labels_file=lab / "pairs.txt")
    assert [r.label for r in recs] == [7, 8, 9]
    (lab / "plain.txt").write_text("5\n6\n4\n")
    assert [r.label for r in scan_images(tmp_path, labels_file=lab / "plain.txt")] == [5, 6, 4]
    (lab / "short.txt").write_text("5\n")
    with pytest.raises(ConfigError, match="1 labels for 3 images"):
        scan_images(tmp_path, labels_file=lab / "short.txt")
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"pairs\.txt: not an image file"):
        scan_images(tmp_path, labels_file=lab / "plain.txt")
    (tmp_path / "pairs.txt").unlink()
    x = load_image(tmp_path / names[0], 8)
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty image folder"):
        scan_images(tmp_path / "empty")
    with pytest.raises(ConfigError, match="not found"):
        scan_images(tmp_path / "nope")
    bad = tmp_path / "bad" / "cat"
    bad.mkdir(parents=True)
    _img(bad / "a.png")
    (bad / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"notes\.txt: not an image file"):
        scan_images(tmp_path / "bad")
    (bad / "notes.txt").unlink()
    (bad / "broken.png").write_bytes(b"not a png at all")
    recs = scan_images(tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"broken\.png: not a readable image"):
        [load_image(r.path, 8) for r in recs]


def test_center_crop_resize_and_roundtrip(tmp_path):
    from PIL import Image

    # a wide image: left third black, middle white, right third black -> the crop keeps white
    arr = np.zeros((30, 90), dtype=np.uint8)
    arr[:, 30:60] = 255
    Image.fromarray(arr).save(tmp_path / "w.png")
    x = load_image(tmp_path / "w.png", 10, channels=1)
    assert x.shape == (1, 10, 10)
    assert x[0, :, 2:8].min() > 0.9
    y = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    save_png(y, tmp_path / "p.png", {"start_id": "a/b", "k": 3})
    assert read_provenance(tmp_path / "p.png") == {"start_id": "a/b", "k": 3}
    np.testing.assert_allclose(load_image(tmp_path / "p.png", 8), y, atol=1 / 127.5 + 1e-6)


def test_shards():
    items = list(range(7))
    parts = [shard(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(ConfigError, match="bad sharding"):
        shard(items, 3, 3)


def test_empty_class_folder_keeps_every_label(tmp_path):
    # folders n0..n4, n2 empty: labels are the indices among *all* class folders
    for c in range(5):
        (tmp_path / f"n{c}").mkdir()
        if c != 2:
            _img(tmp_path / f"n{c}" / "a.png", value=c / 5)
    recs = scan_images(tmp_path)
    assert [(r.class_name, r.label) for r in recs] == [("n0", 0), ("n1", 1), ("n3", 3),
                                                        ("n4", 4)]
    # hidden folders are no classes
    (tmp_path / ".cache").mkdir()
    assert [r.label for r in scan_images(tmp_path)] == [0, 1, 3, 4]
    # every class folder empty, or no folder and no image: a clear error
    for c in (0, 1, 3, 4):
        (tmp_path / f"n{c}" / "a.png").unlink()
    with pytest.raises(ConfigError, match="no images found in its 5 class folders"):
        scan_images(tmp_path)


def test_classes_file_gives_the_label_order(tmp_path):
    from hiergen.imagenet.data import read_classes_file

    for name in ("cat", "dog"):
        _img(tmp_path / "imgs" / name / "a.png")
    (tmp_path / "classes.txt").write_text("# label order of the classifier\nbird\ndog\ncat\n")
    classes = read_classes_file(tmp_path / "classes.txt")
    assert classes == ["bird", "dog", "cat"]
    recs = scan_images(tmp_path / "imgs", classes=classes)
    assert {r.class_name: r.label for r in recs} == {"cat": 2, "dog": 1}
    (tmp_path / "indexed.txt").write_text("cat 1\ndog 0\n")
    assert read_classes_file(tmp_path / "indexed.txt") == ["dog", "cat"]
    (tmp_path / "gap.txt").write_text("cat 1\ndog 5\n")
    with pytest.raises(ConfigError, match="exactly once"):
        read_classes_file(tmp_path / "gap.txt")
    (tmp_path / "dup.txt").write_text("cat\ncat\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_classes_file(tmp_path / "dup.txt")
    with pytest.raises(ConfigError, match="not among the given classes"):
        scan_images(tmp_path / "imgs", classes=["bird", "dog"])


def test_folder_path_that_is_a_file(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a folder"):
        scan_images(tmp_path / "f.png")
