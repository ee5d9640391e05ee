"""Remote devices over real SSH: an OpenSSH server started on 127.0.0.1 (generated host and user keys),
the remote runner end to end through `edgevit compress` and `edgevit bench`, and the ways it fails:
unknown host key, refused connection, a silent server, a wrong key, a runtime missing on the device."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, cli
from loopback_sshd import SSHD, free_port, keygen
from loopback_sshd import profile as loopback_profile
from edgevit.data import Preprocess, open_image_set
from edgevit.devices.remote import measure_remote
from edgevit.devices.ssh import DeviceError
from edgevit.recipe import DeviceConfig
from edgevit.validate import OrtRunner

pytestmark = pytest.mark.skipif(not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None,
                                reason="needs OpenSSH (server and client): bash scripts/system-deps.sh installs it")


def test_recipe_reports_local_and_ssh_device_side_by_side(sshd, tmp_path):
    """The issue's done-when: int8_ptq with the local profile and an SSH profile to 127.0.0.1 gives one
    report with both devices' figures; ONNX Runtime on the 'device' predicts what it did here. The INT8 file
    ships whatever its speed (placement: all), so it is judged not slower than FP32 on both devices."""
    profile = tmp_path / "loopback.yaml"
    profile.write_text(yaml.safe_dump(loopback_profile(sshd)))
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/int8_ptq.yaml", "--out", str(out), "--set", "validate.eval.num=200",
              "--set", "validate.devices=[{name: local-ort-cpu, iters: 5, warmup: 1, throughput_batch: 8}, "
              f"{profile}]", "--set", "budget.max_accuracy_drop=5",  # 200 images: the budget is not the subject
              "--set", "quantize.placement=all")
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["results"]}
    assert rows["onnx-int8"]["precision"] == "int8"
    slower = {c["name"]: c["ok"] for c in rep["checks"] if "not slower than" in c["name"]}
    assert set(slower) == {f"onnx-int8: INT8 not slower than onnx-fp32{at} on {d}"
                           for at in ("", " at batch 8") for d in ("local-ort-cpu", "loopback-ort")}
    assert (res.returncode, rep["status"]) == ((0, "ok") if all(slower.values()) else (1, "failed_checks")), \
        [c for c in rep["checks"] if not c["ok"]]
    for name in ("onnx-fp32", "onnx-int8", "onnx-int8-tensorrt"):
        lat = {d["device"]: d for d in rows[name]["latency"]}
        assert set(lat) == {"local-ort-cpu", "loopback-ort"}, name
        remote = lat["loopback-ort"]
        assert remote["remote"]["host"] == "127.0.0.1" and remote["remote"]["runtime"].startswith("onnxruntime")
        assert remote["batch1"]["runs"] == 20 and 0 < remote["batch1"]["median_ms"] <= remote["batch1"]["p99_ms"]
        assert remote["accuracy"]["images"] == 100 and remote["accuracy"]["agreement"] == 1.0
    names = {c["name"] for c in rep["checks"] if c["ok"]}
    assert "onnx-int8: same predictions on device loopback-ort" in names
    # the device's 100 images are the first of the evaluation set: every class, and its top-1 is the top-1
    # ONNX Runtime gives here on the same images (a sample in class order gave 2 of 10 classes)
    ev, pre = yaml.safe_load((out / "recipe.lock.yaml").read_text())["validate"]["eval"], rep["model"]["preprocessing"]
    images = open_image_set(ev["path"], ev["num"], ev["seed"]).interleaved(ev["seed"])
    first = dataclasses.replace(images, files=images.files[:100], labels=images.labels[:100])
    x, y = first.load(Preprocess(pre["input_size"], pre["mean"], pre["std"], pre["crop_pct"], pre["interpolation"]))
    assert len(set(y.tolist())) == 10
    for name in ("onnx-fp32", "onnx-int8"):
        remote = {d["device"]: d for d in rows[name]["latency"]}["loopback-ort"]["accuracy"]
        local = float((OrtRunner(out / rows[name]["file"], 1)(x).argmax(1) == y).mean())
        assert remote["top1"] == pytest.approx(local), name
    assert "pytorch-fp32" not in {r["name"] for r in rep["results"] if any(d.get("remote") for d in r["latency"])}
    md = (out / "report.md").read_text()
    assert "## On device `loopback-ort`" in md and "## Artifacts on `local-ort-cpu`" in md
    assert not any(p.name.startswith("edgevit-bench-") for p in sshd["dir"].iterdir())  # cleaned up on the device


@pytest.mark.parametrize("suffix", [".onnx", ".ort"])
def test_bench_command_on_ssh_device(sshd, tmp_path, suffix):
    """An ONNX file, and the same graph in ONNX Runtime's ORT format, timed on the device."""
    from edgevit.exporters.onnx import export_onnx
    from edgevit.exporters.ort_format import save_ort_format
    from edgevit.models import load_model
    from edgevit.recipe import ExportConfig, ModelConfig

    model, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    path = tmp_path / "vit.onnx"
    export_onnx(model, info, ExportConfig(), path, "test")
    if suffix == ".ort":
        save_ort_format(path, tmp_path / "vit.ort")
        path = tmp_path / "vit.ort"
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(loopback_profile(sshd)))
    res = cli("bench", str(path), "--device", str(profile), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["device"] == "loopback-ort" and out["remote"]["host"] == "127.0.0.1"
    assert out["batch1"]["median_ms"] > 0 and out["throughput"]["batch"] == 8


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture
def run_tiny(sshd, tiny_onnx):
    from edgevit.models.builtin import BUILTINS

    def run(**over):
        device = DeviceConfig.model_validate(loopback_profile(sshd, **over))
        x = np.zeros((2, 3, 32, 32), np.float32)
        return measure_remote(device, [("tiny", tiny_onnx)], x, None, BUILTINS["vit-cifar10"])
    return run


def test_tiny_artifact_runs_and_cleans_up(run_tiny, sshd):
    """...and times only once it holds the device's bench lock (here held by this process until the device's
    process waits for it, then 1.5 s more: the 'device' is this machine)."""
    import fcntl
    import os
    import tempfile

    held = threading.Event()

    def hold():
        path = Path(tempfile.gettempdir()) / "edgevit-bench.lock"
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            held.set()
            inode = f":{os.stat(path).st_ino} "
            deadline = time.monotonic() + 120  # a waiter shows in /proc/locks as "-> FLOCK ..."
            while time.monotonic() < deadline and not any(
                    "->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()):
                time.sleep(0.05)
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    out = run_tiny()
    holder.join()
    assert out["lock_wait_s"] > 0.5
    preds = out["artifacts"]["tiny"]["predictions"]
    assert all(type(p) is int and 0 <= p < 10 for p in preds)  # class indices as JSON integers
    assert len(out["artifacts"]["tiny"]["predictions"]) == 2 and "top1" not in out["artifacts"]["tiny"]
    assert not any(p.name.startswith("edgevit-bench-") for p in sshd["dir"].iterdir())


def test_remote_words_with_spaces_and_shell_characters_arrive_as_they_are(sshd, tmp_path):
    """Each word of a remote command reaches the device's program as one argument, unexpanded: spaces,
    quotes, $(...), ;, globs and a newline (the work folder and file names come from profiles and users)."""
    from edgevit.devices.ssh import SshDevice

    device = DeviceConfig.model_validate(loopback_profile(sshd))
    words = ["a b", "$(touch pwned)", "x;y", "'q'\"", "*", "l1\nl2", "$HOME"]
    res = SshDevice(device.name, device.ssh).run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))",
                                                  *words])
    assert json.loads(res.stdout) == words
    assert not (Path.home() / "pwned").exists() and not (sshd["dir"] / "pwned").exists()


def test_unknown_host_key_is_refused(sshd, run_tiny, tmp_path):
    other = tmp_path / "known_hosts"
    keygen(tmp_path / "fake_host")
    other.write_text(f"[127.0.0.1]:{sshd['port']} {(tmp_path / 'fake_host.pub').read_text()}")
    with pytest.raises(DeviceError, match="host key not accepted"):
        run_tiny(known_hosts=str(other))


def test_refused_connection_and_wrong_key(sshd, run_tiny):
    with pytest.raises(DeviceError, match=r"127.0.0.1:\d+\): connection refused"):
        run_tiny(port=free_port())
    with pytest.raises(DeviceError, match="authentication failed"):
        run_tiny(key_file=str(sshd["dir"] / "other_id"))


def test_silent_server_times_out(run_tiny):
    """A port that accepts and never speaks SSH: ssh gives up after connect_timeout_s, not never."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    t0 = time.time()
    with pytest.raises(DeviceError, match="timed out"):
        run_tiny(port=srv.getsockname()[1], connect_timeout_s=2)
    assert time.time() - t0 < 30
    srv.close()


def test_missing_runtime_on_device(run_tiny):
    with pytest.raises(DeviceError, match="tensorrt is not importable .* on the device"):
        run_tiny(runtime="tensorrt")
    with pytest.raises(DeviceError, match="no Python at '/nonexistent/python3'"):
        run_tiny(python="/nonexistent/python3")


def test_profiles_validate():
    from edgevit.recipe import load_section

    for name in ("local-ort-cpu", "raspberrypi-ort", "jetson-orin-trt", "mac-coreml"):
        dev = load_section(ROOT / "devices" / f"{name}.yaml", DeviceConfig, "device profile")
        assert dev.name == name
    with pytest.raises(ValueError, match="needs an ssh: section"):
        DeviceConfig(name="x", kind="ssh")
    with pytest.raises(ValueError, match="use kind: ssh"):
        DeviceConfig(name="x", runtime="coreml")
    with pytest.raises(ValueError, match="host"):
        DeviceConfig.model_validate({"name": "x", "kind": "ssh", "ssh": {"host": "a;rm -rf /", "user": "u",
                                                                         "key_file": "k", "known_hosts": "h"}})


def test_coreml_device_path_reaches_prediction(sshd, tmp_path):
    """A CoreML profile against this Linux 'device': the package is copied and loaded with the profile's
    compute units; prediction itself needs macOS, and that is what the error says."""
    from types import SimpleNamespace

    import torch

    from edgevit.exporters.coreml import export_coreml, unavailable

    if unavailable():
        pytest.skip(unavailable())
    info = SimpleNamespace(input_size=32, mean=[0.5] * 3, std=[0.25] * 3, labels=[f"c{i}" for i in range(10)],
                           arch="tiny", crop_pct=1.0, interpolation="bilinear", source="test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    pkg = tmp_path / "tiny.mlpackage"
    export_coreml(model, info, pkg, "none", "fp16")
    device = DeviceConfig.model_validate(loopback_profile(sshd, runtime="coreml", compute_units="cpu_and_ne"))
    with pytest.raises(DeviceError, match="benchmark failed on the device .*macOS"):
        measure_remote(device, [("tiny", pkg)], np.zeros((2, 3, 32, 32), np.float32), None, info)


def test_placement_is_timed_on_the_ssh_device(sshd, tmp_path):
    """With only an SSH device for ONNX Runtime, the INT8 placement's candidates are timed on the device
    (the per-region profile is taken here); what ships and the run's exit code follow from that timing."""
    profile = tmp_path / "loopback.yaml"
    profile.write_text(yaml.safe_dump(loopback_profile(sshd)))
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/int8_ptq.yaml", "--out", str(out), "--set", "validate.eval.num=100",
              "--set", "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]",
              "--set", f"validate.devices=[{profile}]")
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["results"]}
    p = rows["onnx-int8"]["placement"]
    assert p["mode"] == "auto" and p["device"] == "loopback-ort", p["reason"]
    assert {"fp32", "int8"} <= set(p["candidates"]) and all(v > 0 for v in p["candidates"].values())
    assert len(p["regions"]) > 10 and sum(r["int8_ms"] for r in p["regions"]) > 0  # profiled here
    slower = [c for c in rep["checks"] if "not slower than" in c["name"]]
    batch = loopback_profile(sshd)["throughput_batch"]
    assert [c["name"] for c in slower] == ([f"onnx-int8: INT8 not slower than onnx-fp32{at} on loopback-ort"
                                            for at in ("", f" at batch {batch}")] if p["shipped"] == "int8" else [])
    # the placement chose by batch-1 timings on the device; the throughput batch may still be slower
    expected = ((0, "ok") if all(c["ok"] for c in slower) else (1, "failed_checks")) if p["shipped"] == "int8" \
        else (3, "int8_not_faster")
    assert (res.returncode, rep["status"]) == expected, [c for c in rep["checks"] if not c["ok"]]


def test_token_merging_is_timed_on_the_ssh_device(sshd, tmp_path):
    """With only an SSH device, the token planner times the merged and unmerged FP32 ONNX on the device
    (batch 1 and the profile's throughput batch) and keeps ToMe r=8 on the ViT, which saves time there."""
    profile = tmp_path / "loopback.yaml"
    profile.write_text(yaml.safe_dump(loopback_profile(sshd)))
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "tome_fp32", "--out", str(out), "--set", "validate.eval.num=100",
              "--set", "calibration.num=64", "--set", f"validate.devices=[{profile}]")
    assert res.returncode == 0, res.stderr[-2000:]
    t = json.loads((out / "report.json").read_text())["tokens"]
    timing = t["timing"]
    assert timing["where"].startswith("loopback-ort (ONNX Runtime FP32, 1 threads; batch 1 and 8)")
    assert all(v > 0 for v in [*timing["unreduced_ms"].values(), *timing["reduced_ms"].values()])
    assert t["stages"] and timing["time_saving"]["throughput"] >= 0.03, timing
