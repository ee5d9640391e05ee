"""Bad input never crashes: generated malformed recipes and broken image files each get one clear line
(BadInput: exit code 2 from the CLI) or are skipped and reported, never a traceback or a hang."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import CALIB_DIR, ROOT, cli
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.recipe import build_recipe

VALID = {
    "name": "bad-input",
    "model": "builtin:vit-cifar10",
    "calibration": {"path": str(CALIB_DIR), "num": 8},
    "prune": {"nm": {"n": 2, "m": 4}},
    "tokens": {"method": "tome", "r": 4},
    "quantize": {"weights": {"bits": 8}, "activations": {"bits": 8}},
    "export": [{"format": "onnx", "precision": "int8"}, {"format": "coreml", "precision": "fp16"}],
    "validate": {"devices": [{"name": "d", "threads": 1}]},
}

BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                      st.integers(), max_size=2),
    st.sampled_from(["../../etc/passwd", "no/such/file.yaml", "builtin:nope", "timm:", "file:x.py:f", "int4",
                     "tensorrt", "coreml", "fp8", "-1", "1e9", "\x00", "ümlaut", "*", "", "~no-such-user-0/x", "n" * 300,
                     "d/" * 2100]),
)


def _paths(node, prefix=()):
    """Every key path in a nested recipe mapping (list items by index)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


PATHS = sorted(set(_paths(VALID)), key=str)


@st.composite
def bad_recipes(draw):
    """The valid recipe with 1-3 mutations: a value replaced, an unknown key added, or a key removed."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        try:
            for k in path[:-1]:
                parent = parent[k]
            kind = draw(st.sampled_from(["replace", "unknown", "remove"]))
            if kind == "replace":
                parent[path[-1]] = draw(BAD_VALUES)
            elif kind == "unknown" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(BAD_VALUES)
            elif kind == "remove" and isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path's parent
    return data


def _one_clear_line(msg: str) -> None:
    assert msg and "\n" not in msg.strip() and "Traceback" not in msg, msg
    assert len(msg) < 600, msg


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_recipes())
def test_generated_bad_recipes_give_one_clear_line(data):
    """250 generated recipes: each validates or raises BadInput with one line that names where: the file,
    then the key path (``<file>: export.0.precision: ...``) in one of the recipe's sections."""
    path = ROOT / "recipes" / "bad-input.yaml"
    try:
        build_recipe(data, path)
    except BadInput as e:
        msg = str(e)
        _one_clear_line(msg)
        assert msg.startswith(f"{path}: "), msg
        rest = msg[len(f"{path}: "):]  # a section's key path, or a top-level key the recipe does not know
        assert any(rest.startswith(f"{k}.") or rest.startswith(f"{k}:") for k in VALID) or ": unknown key " in rest, msg


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bad_recipes())
def test_bad_recipes_through_the_cli(tmp_path_factory, data):
    """Generated bad recipes written to YAML and run with `edgevit compress`: exit code 2, one line on
    stderr, no traceback, no run folder."""
    tmp = tmp_path_factory.mktemp("cli")
    try:
        build_recipe(data, tmp / "r.yaml")
        assume(False)  # valid by chance: not a bad input
    except BadInput:
        pass
    path, out = tmp / "bad.yaml", tmp / "run"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    res = cli("compress", "--recipe", str(path), "--out", str(out))
    assert res.returncode == 2, (data, res.stderr[-500:])
    _one_clear_line(res.stderr.strip())
    assert not out.exists()


def _image_bytes(kind: str, rng: np.random.Generator) -> bytes:
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    if kind == "cmyk":
        Image.fromarray(arr).convert("CMYK").save(buf, "JPEG")
    elif kind == "gray":
        Image.fromarray(arr).convert("L").save(buf, "PNG")
    elif kind == "16bit":
        Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(buf, "PNG")  # mode I;16
    elif kind == "rgba":
        Image.fromarray(np.dstack([arr, arr[..., :1]])).save(buf, "PNG")
    elif kind == "huge":  # a decompression bomb: far more pixels than any calibration image
        Image.new("L", (20000, 20000)).save(buf, "PNG")
    else:
        Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


GOOD_KINDS = ("rgb", "cmyk", "gray", "16bit", "rgba")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(GOOD_KINDS + ("truncated", "zero", "garbage", "text")),
                          st.integers(0, 2**31)), min_size=1, max_size=8))
def test_generated_image_folders_load_or_skip_each_file(tmp_path_factory, files):
    """Folders of generated good and broken images: the good ones load as RGB at the model's size, each
    broken one is skipped with its file name and reason; a folder with no readable image is BadInput."""
    folder = tmp_path_factory.mktemp("imgs")
    bad = set()
    for i, (kind, seed) in enumerate(files):
        rng = np.random.default_rng(seed)
        name = folder / f"{i:02d}.{'png' if kind in ('gray', '16bit', 'rgba') else 'jpg'}"
        if kind == "truncated":
            data = _image_bytes("rgb", rng)
            name.write_bytes(data[:max(1, int(len(data) * rng.uniform(0.05, 0.6)))])
        elif kind == "zero":
            name.write_bytes(b"")
        elif kind == "garbage":
            name.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes())
        elif kind == "text":
            name.write_text("not an image\n")
        else:
            name.write_bytes(_image_bytes(kind, rng))
            continue
        bad.add(name.name)
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = open_image_set(folder)
    if len(bad) == len(files):
        with pytest.raises(BadInput) as e:
            images.load(pre)
        _one_clear_line(str(e.value))
        return
    x, _ = images.load(pre)
    assert x.shape == (len(files) - len(bad), 3, 32, 32) and np.isfinite(x).all()
    assert {f.split("/")[-1] for f, _ in images.skipped} == bad
    assert all(reason for _, reason in images.skipped)


def test_decompression_bomb_is_skipped_not_loaded(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ok.jpg").write_bytes(_image_bytes("rgb", rng))
    (tmp_path / "bomb.png").write_bytes(_image_bytes("huge", rng))
    images = open_image_set(tmp_path)
    x, _ = images.load(Preprocess(32, (0.5,) * 3, (0.25,) * 3))
    assert len(x) == 1 and [f.split("/")[-1] for f, _ in images.skipped] == ["bomb.png"]


@pytest.mark.parametrize("name", ["..", ".hidden", "../escape", "a/b", "x" * 101])
def test_recipe_name_cannot_leave_the_runs_folder(name):
    with pytest.raises(BadInput, match="name"):
        build_recipe(VALID | {"name": name})


class _Payload:
    """A pickle that runs code when loaded (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_that_runs_code_is_refused_and_does_not_run(tmp_path):
    import torch

    from edgevit.models import load_model
    from edgevit.recipe import ModelConfig

    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload(marker)}, ckpt)
    res = subprocess.run([sys.executable, "-m", "edgevit.cli", "export", "--model", "timm:vit_tiny_patch16_224",
                          "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "--trust-checkpoint" in res.stderr and not marker.exists()
    _one_clear_line(res.stderr.strip())
    with pytest.raises(BadInput):
        load_model(ModelConfig(source="timm:vit_tiny_patch16_224", checkpoint=str(ckpt)))
    assert not marker.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["truncated", "garbage", "empty", "flipped"]), st.integers(0, 2**31))
def test_malformed_onnx_given_to_bench_is_one_clear_line(tmp_path_factory, kind, seed):
    """A real ONNX file, truncated / replaced by noise / emptied / with bytes flipped: `bench` answers
    BadInput (one line) or, when the damage left a valid model, measures it; never a traceback."""
    from edgevit.api import bench
    from edgevit.recipe import DeviceConfig

    rng = np.random.default_rng(seed)
    data = bytearray(_tiny_onnx_bytes())
    if kind == "truncated":
        data = data[:int(rng.integers(1, len(data)))]
    elif kind == "garbage":
        data = bytearray(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
    elif kind == "empty":
        data = bytearray()
    else:
        for i in rng.integers(0, len(data), 8):
            data[i] ^= 0xFF
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    path.write_bytes(bytes(data))
    try:
        out = bench(path, DeviceConfig(warmup=0, iters=1, throughput_batch=1))
        assert out["batch1"]["runs"] == 1
    except BadInput as e:
        _one_clear_line(str(e))


_TINY: list[bytes] = []


def _tiny_onnx_bytes() -> bytes:
    if not _TINY:
        import tempfile

        import torch

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
        with tempfile.TemporaryDirectory() as d:
            p = f"{d}/t.onnx"
            torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), p, input_names=["input"], dynamo=False)
            _TINY.append(open(p, "rb").read())
    return _TINY[0]


def test_cyclic_base_references_are_one_clear_line(tmp_path):
    from edgevit.recipe import load_recipe

    (tmp_path / "a.yaml").write_text("name: a\nbase: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nbase: c.yaml\n")
    (tmp_path / "c.yaml").write_text("name: c\nbase: a.yaml\n")
    (tmp_path / "self.yaml").write_text("name: s\nbase: self.yaml\n")
    for name in ("a.yaml", "self.yaml"):
        with pytest.raises(BadInput, match="circular reference") as e:
            load_recipe(tmp_path / name)
        _one_clear_line(str(e.value))


def test_a_path_the_system_cannot_hold_is_one_clear_line(tmp_path):
    """A ``~user`` path whose user does not exist here (pathlib raises a bare RuntimeError) and names longer than the
    file system allows (OSError: File name too long): in a recipe, the file and key path and the value cut short; on
    the command line (--calib, --recipe, --out), exit code 2 and one line; no run folder either way."""
    for value, why in (("~no-such-user-0/images", "no home directory for user 'no-such-user-0'"),
                       ("x" * 5000, "xxx...xxx"), ("x" * 5000, "xxx (5000 characters): too long for the file system"),
                       ("a/" * 3000, "(6000 characters): too long for the file system")):
        data = yaml.safe_load(yaml.safe_dump(VALID)) | {"calibration": {"path": value, "num": 8}}
        with pytest.raises(BadInput) as e:
            build_recipe(data, tmp_path / "r.yaml")
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / 'r.yaml'}: calibration.path: path ") and why in msg, msg
        _one_clear_line(msg)
    out = tmp_path / "run"
    for args, why in ((("--recipe", "int8_ptq", "--calib", "~no-such-user-0/images", "--out", str(out)),
                       "no home directory for user 'no-such-user-0'"),
                      (("--recipe", "r" * 5000, "--out", str(out)), "recipe path rrr"),
                      (("--recipe", "int8_ptq", "--out", str(tmp_path / ("o" * 300))), "too long for the file system"),
                      (("--recipe", "int8_ptq", "--out", str(tmp_path / ("o" * 250))),
                       "the run folder's name is too long (at most ")):
        res = cli("compress", *args)
        assert res.returncode == 2 and why in res.stderr, res.stderr
        _one_clear_line(res.stderr.strip())
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"", b"PK\x03\x04 not a zip", bytes(range(256))])
def test_a_file_that_is_no_checkpoint_is_one_clear_line(tmp_path, content):
    """Any file given as a checkpoint that torch.load cannot read (text, empty, a broken zip, random bytes: its
    unpickler raises IndexError, EOFError, RuntimeError, ...) is BadInput naming the file."""
    from edgevit.models.sources import read_checkpoint

    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=r"checkpoint .*weights\.pth is not a readable PyTorch") as e:
        read_checkpoint(path)
    _one_clear_line(str(e.value))


def test_a_model_file_that_is_no_python_file_is_one_clear_line(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("def build():\n    pass\n")
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "int8_ptq", "--model", f"file:{path}:build", "--out", str(out))
    assert res.returncode == 2 and "model.txt is not a Python file" in res.stderr, res.stderr
    _one_clear_line(res.stderr.strip())
    assert not out.exists()


def test_an_entry_the_user_may_not_read_is_not_an_image(tmp_path, monkeypatch):
    """A folder entry whose stat fails with EACCES (a link into a folder without permission) is skipped, not a
    PermissionError out of the image scan."""
    from pathlib import Path

    from edgevit.data import images

    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "ok.png")
    (folder / "locked.png").write_bytes(b"")
    real = Path.is_file

    def is_file(self):
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert [p.name for p in open_image_set(folder).files] == ["ok.png"]
    assert images._is_image(folder / "locked.png") is False
