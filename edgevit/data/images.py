"""Image sets and the one preprocessing every runtime shares (PIL + numpy, no torchvision).

An image set is either an ImageFolder (``root/<class>/<image>``, labeled) or a flat folder of
images (unlabeled, for calibration). Unreadable images are skipped with a warning and counted;
a set with no readable image is a :class:`BadInput`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgevit.errors import BadInput

log = logging.getLogger("edgevit")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``input_size / crop_pct`` (``resize="exact"``: both sides, the aspect not
    kept, as Hugging Face processors with a height and width do), center-crop, scale to 0-1, normalize."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    resize: str = "short_side"

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = img.convert("RGB")
        size = self.input_size
        short = int(round(size / self.crop_pct))
        w, h = img.size
        if (w, h) != (size, size) or short != size:
            scale = short / min(w, h)
            if self.resize == "exact":
                nw = nh = short
            else:  # the long side truncated, as torchvision's Resize and transformers' processors do
                nw, nh = max(size, int(w * scale)), max(size, int(h * scale))
            img = img.resize((nw, nh), _RESAMPLE.get(self.interpolation, Image.BILINEAR))
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass
class ImageSet:
    """A list of image files with optional integer labels (index into ``classes``)."""

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.files)

    def interleaved(self, seed: int = 0) -> "ImageSet":
        """The same images in a seeded order in which the classes take turns, each in proportion to its
        size, so that every prefix (a device's first N images, a check sample) spans the classes the way the
        whole set does; an unlabeled set is shuffled."""
        rng = np.random.default_rng(seed)
        if self.labels is None:
            order = rng.permutation(len(self.files))
        else:
            labels = np.asarray(self.labels)
            key = np.empty(len(labels))
            for c in np.unique(labels):
                idx = np.flatnonzero(labels == c)
                # an image's place within its (shuffled) class, as a fraction, plus a jitter that breaks ties
                key[rng.permutation(idx)] = (np.arange(len(idx)) + rng.random()) / len(idx)
            order = np.argsort(key, kind="stable")
        return replace(self, files=[self.files[i] for i in order],
                       labels=[self.labels[i] for i in order] if self.labels is not None else None)

    def batches(self, preprocess: Preprocess, batch_size: int,
                on_file: Callable[[], None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Preprocessed NCHW float32 batches (and labels). Unreadable files are skipped and recorded."""
        xs: list[np.ndarray] = []
        ys: list[int] = []
        for i, path in enumerate(self.files):
            if on_file:
                on_file()
            try:
                with Image.open(path) as im:
                    im.load()
                    xs.append(preprocess(im))
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                if str(path) not in {f for f, _ in self.skipped}:  # once, also when the set is read again
                    self.skipped.append((str(path), f"{type(e).__name__}: {e}"))
                    log.warning("skipping unreadable image %s (%s)", path, type(e).__name__)
                continue
            if self.labels is not None:
                ys.append(self.labels[i])
            if len(xs) == batch_size:
                yield np.stack(xs), (np.asarray(ys, np.int64) if self.labels is not None else None)
                xs, ys = [], []
        if xs:
            yield np.stack(xs), (np.asarray(ys, np.int64) if self.labels is not None else None)

    def load(self, preprocess: Preprocess, batch_size: int = 64,
             on_file: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """All readable images as one array (+ labels); BadInput if none is readable."""
        xs, ys = [], []
        for x, y in self.batches(preprocess, batch_size, on_file):
            xs.append(x)
            if y is not None:
                ys.append(y)
        if not xs:
            raise BadInput(f"no readable image in {self.root} ({len(self.skipped)} unreadable; "
                           f"first: {self.skipped[0][0] if self.skipped else 'none'})")
        return np.concatenate(xs), (np.concatenate(ys) if ys else None)


def _is_image(p: Path) -> bool:
    try:
        return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    except OSError:  # an entry this user may not read (a link into a folder without permission) is not an image
        return False


def open_image_set(root: Path | str, num: int | None = None, seed: int = 0) -> ImageSet:
    """Open an ImageFolder or a flat folder; ``num`` keeps a seeded, class-balanced-in-expectation sample."""
    root = Path(root)
    if not root.exists():
        raise BadInput(f"image folder not found: {root}")
    if not root.is_dir():
        raise BadInput(f"expected a folder of images, got a file: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] | None = None
    classes: list[str] | None = None
    if class_dirs:
        classes, labels = [], []
        for d in class_dirs:
            imgs = sorted(p for p in d.rglob("*") if _is_image(p))
            if not imgs:
                continue
            classes.append(d.name)
            files += imgs
            labels += [len(classes) - 1] * len(imgs)
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if not files:
        files, labels, classes = loose, None, None
    elif loose:
        log.warning("%s: %d images outside class folders are ignored", root, len(loose))
    if not files:
        raise BadInput(f"no images in {root} (expected *.jpg/*.png files, or class sub-folders holding them)")
    if num is not None and num < len(files):
        idx = np.sort(np.random.default_rng(seed).choice(len(files), size=num, replace=False))
        files = [files[i] for i in idx]
        labels = [labels[i] for i in idx] if labels is not None else None
    return ImageSet(root=root, files=files, labels=labels, classes=classes)
