"""Where the bytes of a CoreML package go: `recipes/hybrid_full.yaml` on the built-in hybrid, converted as
W8A8 with sparse int8 weights, FP16 with sparse weights, FP16 and FP32, in one `edgevit compress` run.

    .venv/bin/python benchmarks/coreml_package_bytes.py [--recipe hybrid_full] [--gain weights|macs]

``--gain weights`` (default) exports CoreML packages only, so the pruning planner counts the weights it zeroes
(CoreML's sparse storage); ``--gain macs`` adds the recipe's TensorRT-lowered ONNX, as `hybrid_full` ships, so the
planner counts multiply-accumulates. Prints per package its bytes against the FP32 package and the FP32 weights'
bytes, the program (`model.mlmodel`) split into op types and the bytes of names, and `weight.bin` split by what each
blob holds. Writes benchmarks/results/coreml_package_bytes.json.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["export/coreml-w8a8-sparse.yaml", "export/coreml-sparse.yaml", "export/coreml-fp16.yaml",
            "{name: coreml-fp32, format: coreml, precision: fp32}"]


def _ops(mlmodel: Path):
    from coremltools.proto import Model_pb2

    m = Model_pb2.Model()
    m.ParseFromString(mlmodel.read_bytes())
    fn = next(iter(m.mlProgram.functions.values()))
    return m, list(next(iter(fn.block_specializations.values())).operations)


def program_split(mlmodel: Path) -> dict:
    """The program's bytes by op type, and the bytes of the names in it (each op's output names, its ``name``
    attribute and every argument that refers to another op's output)."""
    m, ops = _ops(mlmodel)
    by_type, count = collections.Counter(), collections.Counter()
    names = 0
    for op in ops:
        by_type[op.type] += op.ByteSize()
        count[op.type] += 1
        names += sum(len(o.name) for o in op.outputs)
        names += sum(len(a.name) for b in op.inputs.values() for a in b.arguments if a.name)
        if "name" in op.attributes:
            names += sum(len(s) for s in op.attributes["name"].immediateValue.tensor.strings.values)
    return {"bytes": mlmodel.stat().st_size, "ops": len(ops), "name_bytes": names,
            "by_op": {t: {"ops": count[t], "bytes": b} for t, b in by_type.most_common()}}


def weight_split(mlmodel: Path, weight_bin: Path) -> dict:
    """``weight.bin``'s bytes by the op and input that read each blob (a blob's bytes run to the next blob's
    offset: its header and alignment count with it) and the elements stored."""
    from coremltools.proto import MIL_pb2

    dtype = {v: k for k, v in MIL_pb2.DataType.items()}
    _, ops = _ops(mlmodel)
    refs = []

    def add(op_type: str, key: str, value) -> None:
        if value.HasField("blobFileValue"):
            tt = value.type.tensorType
            refs.append((value.blobFileValue.offset, f"{op_type}.{key} ({dtype[tt.dataType]})",
                         int(np.prod([d.constant.size for d in tt.dimensions]))))

    for op in ops:
        for key, value in op.attributes.items():
            add(op.type, key, value)
        for key, binding in op.inputs.items():
            for a in binding.arguments:
                if a.HasField("value"):
                    add(op.type, key, a.value)
    refs.sort()
    total = weight_bin.stat().st_size
    out: dict[str, dict] = {}
    for i, (offset, role, elements) in enumerate(refs):
        end = refs[i + 1][0] if i + 1 < len(refs) else total
        r = out.setdefault(role, {"blobs": 0, "bytes": 0, "elements": 0})
        r["blobs"], r["bytes"], r["elements"] = r["blobs"] + 1, r["bytes"] + end - offset, r["elements"] + elements
    return {"bytes": total, "by_role": dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="hybrid_full")
    ap.add_argument("--gain", choices=["weights", "macs"], default="weights")
    ap.add_argument("--eval-num", type=int, default=200)
    args = ap.parse_args()
    exports = PACKAGES + (["export/onnx-int8-tensorrt.yaml"] if args.gain == "macs" else [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [str(Path(sys.executable).parent / "edgevit"), "compress", "--recipe", args.recipe, "--out", str(out),
               "--set", f"export=[{', '.join(exports)}]", "--set", f"validate.eval.num={args.eval_num}"]
        started = datetime.datetime.now(datetime.timezone.utc)
        subprocess.run(cmd, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = json.loads((out / "report.json").read_text())
        print(f"edgevit compress: status {report['status']}")
        fp32_weights = 4 * report["pruning"]["params_before"]
        rows = {}
        for pkg in sorted(out.glob("*.mlpackage")):
            data = pkg / "Data" / "com.apple.CoreML"
            rows[pkg.stem] = {"bytes": sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file()),
                              "program": program_split(data / "model.mlmodel"),
                              "weights": weight_split(data / "model.mlmodel", data / "weights" / "weight.bin")}
    base = rows["coreml-fp32"]["bytes"]
    choice = report["pruning"]["choice"]
    print(f"{args.recipe}, pruning gain counted in {choice['gain_unit']}: {len(report['pruning']['layers'])} of "
          f"{len(choice['layers'])} layers 2:4; FP32 package {base:,} bytes, FP32 weights {fp32_weights:,} bytes")
    print("| package | bytes | vs FP32 package | vs FP32 weights | program (of it names) | weight.bin |\n"
          "|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['bytes']:,} | {r['bytes'] / base:.3f}x | {r['bytes'] / fp32_weights:.3f}x | "
              f"{r['program']['bytes']:,} ({r['program']['name_bytes']:,}) | {r['weights']['bytes']:,} |")
    for name in ("coreml-w8a8-sparse",):
        print(f"\n{name} weight.bin:")
        for role, r in rows[name]["weights"]["by_role"].items():
            print(f"  {role}: {r['blobs']} blobs, {r['bytes']:,} bytes, {r['elements']:,} elements")
        print(f"{name} program, largest op types:")
        for t, r in list(rows[name]["program"]["by_op"].items())[:8]:
            print(f"  {t}: {r['ops']} ops, {r['bytes']:,} bytes")
    dest = ROOT / "benchmarks" / "results" / "coreml_package_bytes.json"
    dest.write_text(json.dumps({"date": started.isoformat(timespec="minutes"), "command": cmd[1:], "gain": args.gain,
                                "layers_pruned": len(report["pruning"]["layers"]), "fp32_weights_bytes": fp32_weights,
                                "packages": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
