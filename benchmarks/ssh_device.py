"""The SSH device path beside the local one: `edgevit compress --recipe int8_ptq` with the local ONNX Runtime
profile and an SSH profile to an OpenSSH server started on 127.0.0.1 (tests/loopback_sshd.py). The "device" is
this same machine: this shows the mechanism (copy, interleaved timing and evaluation over SSH, cleanup) and that
the device's top-1 is the local top-1 on the same images, not a second device's speed.

    .venv/bin/python benchmarks/ssh_device.py [--eval-images 1000] [--device-images 200] [--iters 50]

Writes benchmarks/results/ssh_device.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from loopback_sshd import loopback_sshd, profile  # noqa: E402

from edgevit.api import compress  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-images", type=int, default=1000, help="the run's evaluation images (here)")
    ap.add_argument("--device-images", type=int, default=200, help="the first of them, evaluated on the device")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssh_device.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "sshd").mkdir()
        with loopback_sshd(tmp / "sshd") as server:
            prof = tmp / "loopback.yaml"
            prof.write_text(yaml.safe_dump(profile(server, threads=2, iters=args.iters, throughput_batch=32,
                                                   eval_images=args.device_images)))
            t0 = time.time()
            rep = compress(ROOT / "recipes" / "int8_ptq.yaml",
                           [f"validate.devices=[devices/local-ort-cpu.yaml, {prof}]",
                            f"validate.eval.num={args.eval_images}"], out=tmp / "run", overwrite=True).report
            seconds = round(time.time() - t0, 1)
    rows = []
    fp32 = {}
    for r in rep["results"]:
        lat = {d["device"]: d for d in r.get("latency", [])}
        if "loopback-ort" not in lat:
            continue
        local, remote = lat.get("local-ort-cpu"), lat["loopback-ort"]
        rows.append({"artifact": r["name"], "shipped": (r.get("placement") or {}).get("shipped"),
                     "local_b1_ms": local["batch1"]["median_ms"] if local else None,
                     "device_b1_ms": [remote["batch1"][k] for k in ("median_ms", "p90_ms", "p99_ms")],
                     "device_top1": remote["accuracy"]["top1"], "device_images": remote["accuracy"]["images"],
                     "agreement": remote["accuracy"]["agreement"],
                     "local_top1_all": (r.get("accuracy") or {}).get("top1")})
        if r["name"] == "onnx-fp32":
            fp32 = {"local": rows[-1]["local_b1_ms"], "device": rows[-1]["device_b1_ms"][0]}
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "status": rep["status"], "seconds": seconds,
           "eval_images": args.eval_images, "device_images": args.device_images, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"status {rep['status']}, {seconds} s")
    print("| artifact | local b1 median (ms) | local vs FP32 | device b1 median / p90 / p99 (ms) | device vs FP32 | "
          f"top-1 on device ({rows[0]['device_images'] if rows else 0} images) | top-1 here ({args.eval_images} "
          "images) | agreement with local ORT |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        med, p90, p99 = r["device_b1_ms"]
        print(f"| {r['artifact']} | {r['local_b1_ms']:.2f} | {fp32['local'] / r['local_b1_ms']:.2f}x | "
              f"{med:.2f} / {p90:.2f} / {p99:.2f} | {fp32['device'] / med:.2f}x | {100 * r['device_top1']:.2f} % | "
              f"{100 * r['local_top1_all']:.2f} % | {100 * r['agreement']:.0f} % |")


if __name__ == "__main__":
    main()
