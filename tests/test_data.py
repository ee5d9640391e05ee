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


def test_crop_pct_resizes_short_side_then_crops_as_torchvision(tmp_path):
    """crop_pct 0.8 at 64 px: short side to 80 (long side truncated), center 64 x 64: torchvision's eval
    transform (timm's) gives the same pixels."""
    from torchvision import transforms

    arr = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "z.png")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pre = Preprocess(64, mean, std, crop_pct=0.8, interpolation="bilinear")
    ref = transforms.Compose([transforms.Resize(80, transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(64),
                              transforms.ToTensor(), transforms.Normalize(mean, std)])
    with Image.open(tmp_path / "z.png") as im:
        np.testing.assert_allclose(pre(im), ref(im.convert("RGB")).numpy(), atol=1e-5)


def test_interleaved_order_spans_the_classes_in_every_prefix(small_imagefolder, tmp_path):
    """A device's or a check's first N images come from every class in proportion (the files are listed
    class by class); same seed, same order; the same images, each once."""
    extra = small_imagefolder / "airplane"  # 10 classes x 3 images
    for i in range(6):  # airplane: 9 of 36 images
        (extra / f"more_{i}.jpg").write_bytes(next(extra.glob("*.jpg")).read_bytes())
    s = open_image_set(small_imagefolder)
    a, b = s.interleaved(0), s.interleaved(0)
    assert a.files == b.files and a.files != s.interleaved(1).files
    assert sorted(zip(map(str, a.files), a.labels)) == sorted(zip(map(str, s.files), s.labels))
    assert s.labels[:12].count(0) == 9 and len(set(s.labels[:12])) == 2  # class order: two classes
    first = a.labels[:12]
    assert len(set(first)) >= 9 and 2 <= first.count(0) <= 4  # airplane is a quarter of the set
    flat = open_image_set(small_imagefolder / "cat")
    assert not flat.labeled and sorted(flat.interleaved(0).files) == sorted(flat.files)


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


def test_calibration_is_streamed_with_the_classes_interleaved(tmp_path):
    """The quantize stage's searches (AdaLog / FPCS / granularity) calibrate on the first images streamed
    (quantize.search_images = 32) and calibration_batches keeps a prefix: in folder order the shipped
    calibration set's first 32 images are two classes; streamed, they span all ten."""
    from pathlib import Path

    from edgevit.recipe import load_recipe
    from edgevit.stages.context import RunContext

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "int8_ptq.yaml")
    n = recipe.quantize.search_images
    assert len(set(open_image_set(recipe.calibration.path).labels[:n])) == 2
    pre = Preprocess(32, (0.5,) * 3, (0.25,) * 3)
    ctx = RunContext(recipe=recipe, stage=tmp_path, info=None, pre=pre, model=None, dense=None)
    streamed = ctx.calibration_set()
    assert len(set(streamed.labels[:n])) == 10 and len(streamed) == recipe.calibration.num
    assert streamed.files == ctx.calibration_set().files  # seeded: the same order every run
    x = next(streamed.batches(pre, n))[0]
    assert not np.array_equal(x, open_image_set(recipe.calibration.path).load(pre, n)[0][:n])
