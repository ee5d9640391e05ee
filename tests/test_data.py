"""Image sets and preprocessing: real JPEG/PNG files, corrupt files, empty folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput


def test_imagefolder_labels_and_classes(small_imagefolder):
    s = open_image_set(small_imagefolder)
    assert s.labeled and len(s) == 30 and s.classes[0] == "airplane"
    assert s.labels.count(0) == 3 and s.labels[-1] == 9


def test_preprocess_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    pre = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_pct=1.0, interpolation="bilinear")
    with Image.open(tmp_path / "a.png") as im:
        x = pre(im)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    resized = np.asarray(Image.fromarray(arr).resize((48, 32), Image.BILINEAR), np.float32) / 255
    crop = resized[:, 8:40]
    ref = ((crop - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.3]).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-6)


def test_crop_pct_resizes_short_side_then_crops(tmp_path):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "z.png")
    pre = Preprocess(224, (0, 0, 0), (1, 1, 1), crop_pct=0.875)
    with Image.open(tmp_path / "z.png") as im:
        assert pre(im).shape == (3, 224, 224)


def test_corrupt_image_is_skipped_and_counted(small_imagefolder):
    bad = small_imagefolder / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    s = open_image_set(small_imagefolder)
    pre = Preprocess(32, (0.5,) * 3, (0.25,) * 3)
    x, y = s.load(pre, batch_size=8)
    assert len(x) == 30 and len(y) == 30
    assert len(s.skipped) == 1 and s.skipped[0][0].endswith("broken.jpg")


def test_all_corrupt_fails_clearly(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    s = open_image_set(tmp_path)
    with pytest.raises(BadInput) as e:
        s.load(Preprocess(32, (0.5,) * 3, (0.25,) * 3))
    assert "no readable image" in str(e.value)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(BadInput, match="no images"):
        open_image_set(tmp_path)
    with pytest.raises(BadInput, match="not found"):
        open_image_set(tmp_path / "nope")


def test_flat_folder_is_unlabeled_and_sampling_is_seeded(small_imagefolder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(small_imagefolder.rglob("*.jpg"))[:12]:
        (flat / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    s = open_image_set(flat)
    assert not s.labeled and len(s) == 12
    a, b = open_image_set(flat, num=5, seed=1), open_image_set(flat, num=5, seed=1)
    assert a.files == b.files and len(a) == 5
    assert open_image_set(flat, num=5, seed=2).files != a.files
