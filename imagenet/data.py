"""Image data: ImageNet-style folders, the ILSVRC validation layout, deterministic subsets,
loading with center crop / resize, and PNG files that carry their provenance.

Two layouts are understood by :func:`scan_images`:

* class subfolders ``root/<class>/<image>`` (torchvision ``ImageFolder``); the label of a class
  is its index among the sorted names of *all* class folders, empty ones included (an empty
  folder keeps its index, so the labels of the others do not shift; for ImageNet's wnid folders
  this is the standard 0..999 order used by timm / torchvision classifiers), or its index in an
  explicit class list (``classes``, :func:`read_classes_file`) when the folder holds only some
  of the classifier's classes;
* a flat folder of images plus a labels file (the ILSVRC2012 validation layout). The labels file
  holds either ``<file name> <label>`` lines (label an integer index or a class name), or one label
  per line in the sorted order of the file names (as ``ILSVRC2012_validation_ground_truth.txt``;
  note that the devkit's 1-based ids follow its own ``meta.mat`` order, convert them to
  indices first). A flat folder without a labels file is read unlabelled (label -1).

Image arrays are float32 ``(C, H, W)`` in ``[-1, 1]``, the DDPM convention.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiergen._files import atomic_write
from hiergen.models.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".JPEG")
PROVENANCE_KEY = "hiergen"


@dataclass(frozen=True)
class ImageRecord:
    """One start image: ``id`` (relative path without extension, '/'-separated), ``path``,
    ``label`` (class index, -1 when unknown) and ``class_name``."""

    id: str
    path: str
    label: int
    class_name: str

    @property
    def safe_id(self) -> str:
        """``id`` usable as a flat file name."""
        return self.id.replace("/", "__")


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if _is_hidden(p) or p.is_dir():
            continue
        if p.suffix.lower() not in {e.lower() for e in IMAGE_EXTENSIONS}:
            raise ConfigError(f"{p}: not an image file (extension {p.suffix!r}); "
                              f"expected one of {', '.join(sorted(set(IMAGE_EXTENSIONS)))}")
        files.append(p)
    return files


def _read_labels_file(path: Path, names: list[str]) -> dict[str, str]:
    """Map file name -> raw label string."""
    if not path.is_file():
        raise ConfigError(f"{path}: labels file not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines and all(len(ln.replace(",", " ").split()) >= 2 for ln in lines):
        out = {}
        for ln in lines:
            name, label = ln.replace(",", " ").split()[:2]
            out[Path(name).name] = label
        return out
    if len(lines) != len(names):
        raise ConfigError(f"{path}: {len(lines)} labels for {len(names)} images; a one-label-"
                          "per-line file must list one label per image in sorted file order")
    return dict(zip(names, lines))


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Class names in label order from a text file: one name per line (label = line index among
    the non-empty, non-``#`` lines), or ``<name> <index>`` lines giving each index explicitly
    (the indices must then be 0..n-1, each once)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: classes file not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ConfigError(f"{path}: classes file lists no classes")
    rows = [ln.replace(",", " ").split() for ln in lines]
    if all(len(r) == 1 for r in rows):
        names = [r[0] for r in rows]
    else:
        try:
            pairs = sorted((int(r[1]), r[0]) for r in rows if len(r) == 2)
        except ValueError as exc:
            raise ConfigError(f"{path}: lines must be '<name>' or '<name> <index>'") from exc
        if len(pairs) != len(rows) or [i for i, _ in pairs] != list(range(len(pairs))):
            raise ConfigError(f"{path}: '<name> <index>' lines must give each index "
                              f"0..{len(rows) - 1} exactly once")
        names = [n for _, n in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{path}: class names listed twice: {dup[:5]}")
    return names


def scan_images(
    root: str | os.PathLike,
    labels_file: str | os.PathLike | None = None,
    n_per_class: int | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> list[ImageRecord]:
    """List the start images of a folder, sorted by id.

    Parameters
    ----------
    root : an ImageFolder-style folder (class subfolders) or a flat folder of images.
    labels_file : labels of a flat folder (ILSVRC validation layout), see the module docstring.
    n_per_class : keep a deterministic subset of at most this many images per class, drawn
        with ``numpy.random.default_rng(seed)`` from the id-sorted list.
    classes : class names in label order (default: the sorted names of all class folders, empty
        ones included; for a flat folder, the sorted label names, or the integers themselves).
    """
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: not a folder (expected an image folder)")
    if not root.is_dir():
        raise ConfigError(f"{root}: image folder not found")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    pairs: list[tuple[Path, str | None]] = []
    if subdirs and labels_file is None:
        for d in subdirs:
            pairs += [(f, d.name) for f in _image_files(d)]
    else:
        files = _image_files(root)
        if labels_file is not None:
            raw = _read_labels_file(Path(labels_file), [f.name for f in files])
            for f in files:
                if f.name not in raw:
                    raise ConfigError(f"{f}: no label in {labels_file}")
                pairs.append((f, raw[f.name]))
        else:
            pairs = [(f, None) for f in files]
    if not pairs:
        where = f" in its {len(subdirs)} class folders" if subdirs and labels_file is None else ""
        raise ConfigError(f"{root}: no images found{where} (empty image folder)")

    names = sorted({c for _, c in pairs if c is not None})
    if subdirs and labels_file is None:
        # every class folder counts, empty ones too: labels never depend on which are empty
        names = [d.name for d in subdirs]
    if classes is None:
        if names and all(n.lstrip("-").isdigit() for n in names) and labels_file is not None:
            index = {n: int(n) for n in names}
        else:
            index = {n: i for i, n in enumerate(names)}
    else:
        index = {n: i for i, n in enumerate(classes)}
        for n in names:
            if n not in index:
                if n.lstrip("-").isdigit():
                    index[n] = int(n)
                else:
                    raise ConfigError(f"{root}: class {n!r} is not among the given classes")
    records = [
        ImageRecord(
            id=f.relative_to(root).with_suffix("").as_posix(),
            path=str(f),
            label=index[c] if c is not None else -1,
            class_name=c if c is not None else "",
        )
        for f, c in pairs
    ]
    records.sort(key=lambda r: r.id)
    if n_per_class is not None:
        records = subset_per_class(records, n_per_class, seed)
    return records


def subset_per_class(records: Sequence[ImageRecord], n_per_class: int, seed: int = 0
                     ) -> list[ImageRecord]:
    """At most ``n_per_class`` records per label, a seeded draw; the result is sorted by id."""
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[ImageRecord]] = {}
    for r in sorted(records, key=lambda r: r.id):
        by_label.setdefault(r.label, []).append(r)
    keep: list[ImageRecord] = []
    for label in sorted(by_label):
        group = by_label[label]
        pick = rng.permutation(len(group))[:n_per_class]
        keep += [group[i] for i in sorted(pick)]
    return sorted(keep, key=lambda r: r.id)


def _open_image(path: str | os.PathLike):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: image file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ConfigError(f"{path}: not a readable image ({exc})") from exc
    return img


def center_crop_resize(img, size: int):
    """Resize so the short side is ``size`` (box-downsample then bicubic, as guided-diffusion's
    ``center_crop_arr``), then center-crop to ``size x size``. Returns a PIL image."""
    from PIL import Image

    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(max(size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int, channels: int = 3) -> np.ndarray:
    """One image as float32 ``(channels, size, size)`` in [-1, 1] (channels 1 or 3)."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    img = _open_image(path).convert("L" if channels == 1 else "RGB")
    img = center_crop_resize(img, size)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def load_images(records: Sequence[ImageRecord], size: int, channels: int = 3) -> np.ndarray:
    """``(B, channels, size, size)`` float32 in [-1, 1]."""
    return np.stack([load_image(r.path, size, channels) for r in records])


def to_uint8(x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> ``(H, W)`` or ``(H, W, 3)`` uint8 (the saving quantisation)."""
    a = np.clip(np.round((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def save_png(x: np.ndarray, path: str | os.PathLike, provenance: dict | None = None) -> None:
    """Write ``x`` ``(C, H, W)`` in [-1, 1] as a PNG, atomically (:func:`hiergen._files.atomic_write`), with
    ``provenance`` stored as JSON in the PNG text chunk ``hiergen``."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if provenance is not None:
        info.add_text(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))
    image = Image.fromarray(to_uint8(x))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance dict stored by :func:`save_png` (empty if none)."""
    img = _open_image(path)
    text = getattr(img, "text", {}) or {}
    return json.loads(text[PROVENANCE_KEY]) if PROVENANCE_KEY in text else {}


def records_to_json(records: Sequence[ImageRecord]) -> str:
    return json.dumps([r.__dict__ for r in records], indent=1)


def records_from_json(text: str) -> list[ImageRecord]:
    return [ImageRecord(**d) for d in json.loads(text)]


def shard(items: Sequence, shard_index: int = 0, num_shards: int = 1) -> list:
    """The items of one shard: every ``num_shards``-th item starting at ``shard_index``."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"bad sharding: shard index {shard_index} of {num_shards} shards")
    return list(items)[shard_index::num_shards]
