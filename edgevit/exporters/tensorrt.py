"""TensorRT engines from our ONNX files: build (FP32 / FP16 / INT8 from QDQ, optional 2:4 sparse
weights, LayerNorms optionally pinned to FP32, a timing cache kept beside the engine), read back each
layer's precision and tactic (engine inspector) and which layers took sparse kernels, and time the
engine on the GPU.

TensorRT needs an NVIDIA GPU and the ``tensorrt`` package (``pip install edgevit[tensorrt]``); it is
imported only here and only when called. ``unavailable()`` says why it cannot run on this machine.
With ``sparse=True`` TensorRT considers sparse tactics for layers whose weights already follow 2:4
and keeps them only where they are faster; its build log names both sets, and ``sparsity_from_log``
reads them back.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

ELIGIBLE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)")
PICKED = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)")


def unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or a missing libnvinfer behind the bindings
        return f"TensorRT is not installed or does not load ({type(e).__name__}: {e}); pip install 'edgevit[tensorrt]'"
    try:
        import torch
    except ImportError:
        return "torch is needed to hold the engine's GPU buffers"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (TensorRT engines are built and run on an NVIDIA GPU)"
    return None


def sparsity_from_log(lines: list[str]) -> dict:
    """Layers TensorRT found eligible for sparse math and those it picked a sparse kernel for."""
    out = {"eligible": [], "picked": []}
    for line in lines:
        for key, pattern in (("eligible", ELIGIBLE), ("picked", PICKED)):
            m = pattern.search(line)
            if m:
                out[key] += [name.strip() for name in m.group(1).split(",") if name.strip()]
    return out


BOOKKEEPING = ("Reformat", "NoOp", "Shuffle", "Constant", "Identity")
MATH = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected|myelin", re.I)
WIDTH = {"int8": 1, "fp16": 2, "fp32": 3}


def _precision(fmt: str) -> str:
    f = fmt.lower()
    for key, name in (("int8", "int8"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32")):
        if key in f:
            return name
    return "unknown"


def layer_report(info: dict, precision: str, fp32_layers: list[str] = ()) -> dict:
    """Read the engine inspector's JSON (``get_engine_information``, DETAILED verbosity): each layer's
    output precision and tactic, counts per precision, the math layers (conv/GEMM/MatMul) that ran
    wider than the build's precision ("fell back"), apart from those pinned to FP32 on purpose, and the
    layers whose tactic is a sparse kernel."""
    layers, counts, fell_back, sparse = [], {}, [], []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # ONLY_LAYER_NAMES verbosity: names, nothing to judge
            layers.append({"name": layer})
            continue
        name, kind = layer.get("Name", "?"), layer.get("LayerType", "?")
        out = layer.get("Outputs") or [{}]
        inp = layer.get("Inputs") or [{}]
        p_out, p_in = _precision(out[0].get("Format/Datatype", "")), _precision(inp[0].get("Format/Datatype", ""))
        tactic = layer.get("TacticName") or layer.get("TacticValue", "")
        layers.append({"name": name, "type": kind, "input": p_in, "output": p_out, "tactic": tactic})
        if kind in BOOKKEEPING:
            continue
        counts[p_in] = counts.get(p_in, 0) + 1
        forced = any(f in name for f in fp32_layers)
        if MATH.search(f"{kind} {name}") and WIDTH.get(p_in, 0) > WIDTH[precision] and not forced:
            fell_back.append(f"{name} ({p_in})")
        if "sparse" in str(tactic).lower():
            sparse.append(name)
    return {"layers": len(layers), "by_input_precision": counts, "fell_back": fell_back,
            "sparse_tactics": sparse, "detail": layers}


def trtexec_command(onnx_file: str, precision: str, sparse: bool = False, input_size: int | None = None,
                    max_batch: int = 32, fp32_layers: list[str] = ()) -> str:
    """The ``trtexec`` line that builds the same engine on a device (e.g. a Jetson) from the ONNX file
    (``fp32_layers``: layer names - ONNX node names - pinned to FP32, e.g. the LayerNorms)."""
    engine = onnx_file.removesuffix(".onnx") + ".engine"
    parts = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine}",
             f"--timingCacheFile={onnx_file.removesuffix('.onnx')}.timing.cache"]
    if precision in ("fp16", "int8"):
        parts.append("--fp16")
    if precision == "int8":
        parts.append("--int8")  # explicit quantization: scales come from the QDQ nodes
    if sparse:
        parts.append("--sparsity=enable")
    if fp32_layers and precision != "fp32":
        parts += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers),
                  "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    if input_size:
        shape = f"3x{input_size}x{input_size}"
        parts += [f"--minShapes=input:1x{shape}", f"--optShapes=input:1x{shape}",
                  f"--maxShapes=input:{max_batch}x{shape}"]
    return " ".join(parts + ["--verbose"])


def build_engine(onnx_path: Path, engine_path: Path, precision: str = "fp16", sparse: bool = False,
                 max_batch: int = 32, workspace_mb: int = 2048, layernorm_fp32: bool = False) -> dict:
    """Build and write a serialized engine (atomically) and its timing cache beside it (reused by the
    next build); returns the build facts: sparse layers from the log, and the inspector's per-layer
    precisions and tactics. ``layernorm_fp32``: normalization layers are pinned to FP32."""
    import tensorrt as trt

    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8 (got {precision!r})")

    class _Captured(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.INFO:
                self.lines.append(msg)

    logger = _Captured()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors[:3])}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float run in FP16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ nodes give the scales
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    pinned = []
    if layernorm_fp32 and precision != "fp32":
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
                pinned.append(layer.name)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache_path = engine_path.with_name(engine_path.name.removesuffix(".engine") + ".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = list(inp.shape)
        if dims[0] == -1:
            rest = dims[1:]
            profile.set_shape(inp.name, [1] + rest, [1] + rest, [max_batch] + rest)
    config.add_optimization_profile(profile)
    t0 = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine: " + " | ".join(logger.lines[-5:]))
    build_s = round(time.time() - t0, 1)
    for path, data in ((engine_path, bytes(plan)), (cache_path, bytes(config.get_timing_cache().serialize()))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    layers = layer_report(inspect_engine(engine_path), precision, pinned)
    return {"tensorrt": trt.__version__, "precision": precision, "sparse_weights": sparse,
            "build_s": build_s, "size_bytes": engine_path.stat().st_size, "timing_cache": cache_path.name,
            "layernorm_fp32": pinned, "sparsity": sparsity_from_log(logger.lines) if sparse else None,
            "layers": layers}


def inspect_engine(engine_path: Path) -> dict:
    """The engine inspector's JSON for the whole engine, with a dynamic input at its profile's opt shape
    (formats of dynamic-shape engines are only known once a shape is set)."""
    import json

    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and -1 in tuple(engine.get_tensor_shape(name)):
            context.set_input_shape(name, engine.get_tensor_profile_shape(name, 0)[1])
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


class EngineRunner:
    """Runs a serialized engine on the GPU: ``runner(x)`` takes and returns numpy arrays (first output)."""

    def __init__(self, engine_path: Path):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self.buffers: dict = {}

    def _bind(self, shape: tuple[int, ...]) -> None:
        import numpy as np

        if self.buffers and tuple(self.buffers[self.inputs[0]].shape) == tuple(shape):
            return
        self.context.set_input_shape(self.inputs[0], shape)
        for name in self.inputs + self.outputs:
            np_dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            dtype = self.torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
            self.buffers[name] = self.torch.zeros(tuple(self.context.get_tensor_shape(name)), dtype=dtype,
                                                  device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def launch(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)

    def __call__(self, x):
        self._bind(tuple(x.shape))
        self.buffers[self.inputs[0]].copy_(self.torch.from_numpy(x))
        self.launch()
        self.stream.synchronize()
        return self.buffers[self.outputs[0]].float().cpu().numpy()


def time_engine(engine_path: Path, shape: tuple[int, ...], warmup: int = 20, iters: int = 200) -> dict:
    """Median / p90 GPU latency (ms) of one engine call on a zero input of ``shape`` (CUDA events)."""
    import numpy as np
    import torch

    runner = EngineRunner(engine_path)
    runner._bind(shape)
    times = []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(runner.stream)
        runner.launch()
        end.record(runner.stream)
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    t = np.asarray(times)
    return {"batch": shape[0], "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "runs": len(t), "images_per_s": shape[0] * 1e3 / float(np.median(t))}
