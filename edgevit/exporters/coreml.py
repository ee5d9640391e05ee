"""CoreML export: an mlprogram classifier an iOS/macOS app drops into Xcode as it is.

The model takes an RGB image (``ImageType``, 0-255 pixels at the model's input size) and returns the
class label and a probability per label (``ClassifierConfig``). The per-channel normalization
(x / 255 - mean) / std is folded into a first layer, since ``ImageType`` only has a scalar scale;
labels and preprocessing also travel in the model's metadata. Weight compression is
``coremltools.optimize.coreml``'s graph passes, run at the end of the conversion's own pass pipeline:

* ``w8``: int8 per-channel linear weights (``constexpr_blockwise_shift_scale`` / ``constexpr_affine_dequantize``);
* ``palettize4`` / ``palettize6``: k-means look-up tables (``constexpr_lut_to_dense``);
* ``sparse``: the zeros the pruning stage made are stored sparse (``constexpr_sparse_to_dense``) - a
  threshold prune at 1e-12 that changes no value;
* ``w8-sparse``: both, jointly: int8 per-channel weights whose zeros are stored as a bit mask
  (``constexpr_sparse_blockwise_shift_scale``, coremltools' joint compression, iOS18).

``precision="int8"`` (W8A8) converts the quantize stage's model lowered for CoreML: every activation
site becomes a CoreML ``quantize``/``dequantize`` pair with edgevit's calibrated scale (coremltools'
own activation calibration would need macOS to run the model), and the weights, already on their
int8 grid, are stored int8 per channel (``w8``) with the same codes.

Conversion runs on Linux; prediction needs macOS (``coremltools`` says so), so what is validated here
is the saved package: input/output descriptions, metadata, and which compressed-weight ops it holds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from edgevit.exporters.onnx import artifact_metadata

COMPRESSED_OPS = ("constexpr_sparse_to_dense", "constexpr_lut_to_dense", "constexpr_affine_dequantize",
                  "constexpr_blockwise_shift_scale", "constexpr_sparse_blockwise_shift_scale")


def _coremltools():
    """coremltools, imported quietly: on Linux it warns at import that prediction is unavailable, and it
    logs every weight it leaves uncompressed; the report says both once."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools

    return coremltools


def unavailable(compression: str = "none") -> str | None:
    """Why CoreML export (with this weight compression) cannot run here, or None."""
    try:
        _coremltools()
    except ImportError as e:
        return f"coremltools is not installed ({e}); pip install 'edgevit[coreml]'"
    if compression.startswith("palettize"):
        try:
            import sklearn  # noqa: F401  coremltools' k-means palettizer needs it
        except ImportError:
            return "CoreML palettization needs scikit-learn (k-means); pip install 'edgevit[coreml]'"
    return None


class _Normalized(nn.Module):
    """0-255 RGB in, the model's normalized input computed per channel, logits out."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image * self.scale + self.shift)


def _convert(ct, traced, target: str, size: int, info, precision: str, layernorm_fp32: bool, compression: str):
    with _small_constants_shared(ct) as pipeline, _validated_once_per_pipeline():
        _add_compression(pipeline, compression)
        return ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
            inputs=[ct.ImageType(name="image", shape=(1, 3, size, size), color_layout=ct.colorlayout.RGB)],
            classifier_config=ct.ClassifierConfig(list(info.labels)),
            compute_precision=_compute_precision(ct, precision, layernorm_fp32), pass_pipeline=pipeline)


@contextmanager
def _small_constants_shared(ct) -> Iterator[object]:
    """The converter's default pass pipeline with its constant deduplication extended to constants of any
    size: coremltools merges equal constants of 100 or more elements only, and keeps one copy per use of each
    smaller one - the scale and zero point of every activation quantizer, shapes, axes - which the program
    (``model.mlmodel``) stores inline with its name. Merged, the built-in hybrid's programs are 17-20 % smaller
    (W8A8 + sparse: 261 -> 217 KB). The same deduplication also removes duplicates of two-output ops correctly
    (:func:`_remove_duplicate_ops`). Both are class attributes in coremltools, so they are restored for whatever
    converts next."""
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import const_deduplication

    default = const_deduplication._const_threshold
    remove = const_deduplication.__dict__["remove_duplicate_ops"]
    const_deduplication.remove_duplicate_ops = _remove_duplicate_ops
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.set_options("common::const_deduplication", {"const_threshold": 1})
    try:
        yield pipeline
    finally:
        const_deduplication._const_threshold = default
        const_deduplication.remove_duplicate_ops = remove


def _remove_duplicate_ops(self, block, unique2duplicates: dict, force_replace: bool) -> None:
    """coremltools' deduplication step, for ops of any number of outputs: it moves the uses of a duplicate's
    first output only, then cannot delete an op with two (``constexpr_sparse_blockwise_shift_scale``, the int8
    + sparse form: its mask and its values), so two equal weights in that form stopped the conversion (a
    random-weight timm EfficientFormerV2: the zero-initialized norm after each MLP's last conv, folded into it,
    makes those weights all zero)."""
    for unique, duplicates in unique2duplicates.items():
        for duplicate in duplicates:
            if any(v in block.outputs for v in duplicate.op.outputs):
                continue
            for old, new in zip(duplicate.op.outputs, unique.op.outputs):
                block.replace_uses_of_var_after_op(anchor_op=duplicate.op, old_var=old, new_var=new,
                                                   force_replace=force_replace)
            block.remove_ops([duplicate.op])


@contextmanager
def _validated_once_per_pipeline() -> Iterator[None]:
    """coremltools checks the whole program's consistency (every op's inputs and outputs, var visibility) after
    each of its ~120 graph passes; the check changes nothing, and a W8A8 package of the pruned, token-merged
    built-in hybrid converted in 9.8 s with it and 7.7 s without. Within this block each pass pipeline runs the
    same check once, after its
    last pass (with the scope check coremltools makes after dead-code elimination, when the pipeline has that
    pass): the same program comes out, and a pass that broke it still fails the conversion, only without naming
    the pass."""
    from coremltools.converters.mil.mil import Program
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    apply = PassPipelineManager.__dict__.get("apply_pipeline")
    if not isinstance(apply, staticmethod):  # another coremltools layout: its checks stay as they are
        yield
        return
    check = Program.validate

    def once(prog, pass_pipeline):
        before = Program.validate
        Program.validate = lambda self, check_essential_scope=False: None
        try:
            apply.__func__(prog, pass_pipeline)
        finally:
            Program.validate = before
        check(prog, check_essential_scope="common::dead_code_elimination" in pass_pipeline.passes)

    PassPipelineManager.apply_pipeline = staticmethod(once)
    try:
        yield
    finally:
        PassPipelineManager.apply_pipeline = apply


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """coremltools draws tqdm bars (its modules hold ``tqdm`` by name; TQDM_DISABLE is read once, when
    tqdm is first imported), which would tear through edgevit's own progress display: within this
    block those names give disabled bars."""
    import sys
    from functools import partial

    from tqdm import tqdm

    patched = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("coremltools") and mod is not None:
            for attr in ("tqdm", "_tqdm"):
                if getattr(mod, attr, None) is tqdm:
                    patched.append((mod, attr))
                    setattr(mod, attr, partial(tqdm, disable=True))
    try:
        yield
    finally:
        for mod, attr in patched:
            setattr(mod, attr, tqdm)


def _compute_precision(ct, precision: str, layernorm_fp32: bool):
    if precision == "fp32":
        return ct.precision.FLOAT32
    if layernorm_fp32:
        return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type != "layer_norm")
    return ct.precision.FLOAT16


@contextmanager
def _int8_graph(model: nn.Module, on: bool) -> Iterator[None]:
    """While tracing a quantized model for W8A8: activation sites as torch quantize/dequantize ops, and
    each quantized weight as a constant already on its int8 grid (a fake-quant op on a parameter
    would be traced as an op coremltools does not convert)."""
    if not on:
        yield
        return
    from edgevit.quant.sites import QuantWeighted, quantize_ops

    sites = [m for m in model.modules() if isinstance(m, QuantWeighted)]
    if not any(m.input_quant.qparams is not None for m in sites):
        raise ValueError("CoreML int8 needs a quantized model (the quantize stage's output)")
    saved = [m.weight_override for m in sites]
    for m in sites:
        w = m.weight().detach().clone()
        m.weight_override = lambda w=w: w
    try:
        with quantize_ops():
            yield
    finally:
        for m, o in zip(sites, saved):
            m.weight_override = o


def _add_compression(pipeline, compression: str) -> None:
    """Append the weight compression passes of ``compression`` to the conversion's pass pipeline, after its
    cleanup (so they compress the weights the fusions left), then merge the constants they add. coremltools'
    ``optimize.coreml`` functions apply the same passes to a converted model, but each then converts the whole
    program again through the default pipeline: in one pipeline a W8A8 + sparse package of the built-in hybrid
    converted in 15 s instead of 24-28 s here, with the same ops and the same ``weight.bin``."""
    import coremltools.optimize.coreml as cto

    if compression == "none":
        return
    passes: list[tuple[str, object, dict]] = []  # pass, its op config, further options
    if compression in ("w8", "w8-sparse"):
        # with sparse storage every tensor is quantized, so the pruned ones all get the joint form
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=512 if compression == "w8" else 1)
        passes.append(("linear_quantize_weights", op, {}))
    elif compression.startswith("palettize"):
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=int(compression.removeprefix("palettize")),
                                    weight_threshold=512)
        passes.append(("palettize_weights", op, {}))
    elif compression != "sparse":
        raise ValueError(f"unknown CoreML compression {compression!r}")
    if compression in ("sparse", "w8-sparse"):
        # every pruned tensor, however small (a hybrid's 16-channel convs have < 512 weights): sparse storage
        # (a bit mask + the non-zeros) is smaller than dense at 2:4 for any size
        op = cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.3, weight_threshold=1)
        passes.append(("prune_weights", op, {"joint_compression": compression == "w8-sparse"}))
    for name, op, options in passes:
        pipeline.append_pass(f"compression::{name}")
        pipeline.set_options(f"compression::{name}", {"config": cto.OptimizationConfig(global_config=op), **options})
    pipeline.append_pass("common::const_deduplication")
    pipeline.append_pass("common::dead_code_elimination")


def export_coreml(model: nn.Module, info, path: Path, compression: str = "none", precision: str = "fp16",
                  target: str = "iOS17", recipe: str = "", layernorm_fp32: bool = False) -> dict:
    """Convert ``model`` to an ``.mlpackage`` at ``path`` (written beside, then renamed); returns facts.
    ``layernorm_fp32``: FP16 compute everywhere but the ``layer_norm`` ops (see ``export.fp16``)."""
    why = unavailable(compression)
    if why:
        raise RuntimeError(why)
    ct = _coremltools()

    if precision == "int8" and (compression not in ("w8", "w8-sparse") or target == "iOS16"):
        raise ValueError("a CoreML int8 (W8A8) model needs compression w8 (or w8-sparse) and deployment target "
                         "iOS17 or later (the quantize op)")
    size = info.input_size
    wrapped = _Normalized(model, info.mean, info.std).eval()
    with torch.no_grad(), warnings.catch_warnings(), _int8_graph(model, precision == "int8"):
        warnings.simplefilter("ignore")  # tracer chatter about timm's shape asserts
        # check_trace off: on the same input it traces and runs the model again (60 % of the trace time) to warn
        # of output mismatches, silenced here, and to fail a forward pass that traces another graph the second
        # time (a random or stateful one; the ONNX exporter, tracing once, does not check that either)
        traced = torch.jit.trace(wrapped, torch.rand(1, 3, size, size) * 255, check_trace=False)
    traced_ops = _quantize_ops(traced) if precision == "int8" else None
    with _quiet_progress():
        mlmodel = _convert(ct, traced, target, size, info, precision, layernorm_fp32, compression)
    mlmodel.short_description = f"{info.arch} image classifier ({len(info.labels)} classes), edgevit {recipe}"
    mlmodel.user_defined_metadata.update(artifact_metadata(info, recipe, precision) | {"compression": compression})
    tmp = path.with_name(f".tmp-{path.name}")  # coremltools wants the .mlpackage suffix
    shutil.rmtree(tmp, ignore_errors=True)
    mlmodel.save(str(tmp))
    _serialize_deterministically(tmp)
    _name_items_by_content(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return {"format": "coreml", "target": target, "compression": compression, "precision": precision,
            "layernorm_fp32": layernorm_fp32 and precision != "fp32", "traced_quantize_ops": traced_ops} \
        | inspect_package(path)


def _serialize_deterministically(package: Path) -> None:
    """Rewrite the package's program with protobuf's deterministic serialization (map entries sorted by key):
    coremltools writes map fields (the user metadata among them) in an order that changes from one process to
    the next, so the same recipe and seed gave another model.mlmodel (the same program, other bytes) each run."""
    from coremltools.proto import Model_pb2

    manifest = json.loads((package / "Manifest.json").read_text())
    item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    program = package / "Data" / item["path"]
    spec = Model_pb2.Model.FromString(program.read_bytes())
    program.write_bytes(spec.SerializeToString(deterministic=True))


def _name_items_by_content(package: Path) -> None:
    """coremltools names the package's two items (program, weights) with random UUIDs in ``Manifest.json``, so
    the same model saved twice differed in that file: each identifier becomes a UUID derived from the item's path
    and the bytes of the package's data, so the same recipe and seed give the same package bytes. The identifiers
    only key the items within the manifest (``rootModelIdentifier`` names the program)."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    digest = hashlib.sha256()
    for f in sorted(p for p in (package / "Data").rglob("*") if p.is_file()):
        digest.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgevit:{digest.hexdigest()}:{item['path']}"))
               for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _quantize_ops(traced) -> dict[str, int]:
    """Activation quantize ops in the traced graph: ``all``, and ``distinct`` once equal constants are shared and
    equal computations merged (``torch.jit.freeze``, then CSE), as coremltools' constant deduplication and
    common-subexpression passes merge them: e.g. the class and distillation heads of an untrained LeViT, whose
    BatchNorms are equal and read the same pooled tokens, quantize one tensor in the converted program."""
    def count(graph) -> int:
        return sum(1 for n in graph.nodes() if n.kind() == "aten::quantize_per_tensor")

    frozen = torch.jit.freeze(traced.eval(), optimize_numerics=False).graph
    torch._C._jit_pass_constant_pooling(frozen)
    torch._C._jit_pass_cse(frozen)
    return {"all": count(traced.inlined_graph), "distinct": count(frozen)}


def package_size(path: Path) -> int:
    """Bytes on disk of an .mlpackage (a folder)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def inspect_package(path: Path) -> dict:
    """What can be checked without macOS: descriptions, metadata, op kinds (compressed weights)."""
    ct = _coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    ops, labels, norm_types = Counter(), [], Counter()
    chains: dict[str, set[str]] = {}  # var made by constexpr ops -> the constexpr op kinds it is made by
    layers: Counter = Counter()  # compressed op kind -> ops (conv, linear, ...) that read a weight made by it
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                made_by = set().union(*(chains.get(b.name, set()) for arg in op.inputs.values() for b in arg.arguments))
                if op.type.startswith("constexpr_"):
                    chains.update({o.name: made_by | {op.type} for o in op.outputs})
                else:
                    layers.update(made_by)
                if op.type == "layer_norm":
                    dtype = op.outputs[0].type.tensorType.dataType
                    norm_types[ct.proto.MIL_pb2.DataType.Name(dtype).lower()] += 1
                if op.type == "classify":  # the labels the classifier returns, as stored in the program
                    items = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    labels = [v.immediateValue.tensor.strings.values[0] for v in items]
    inp = desc.input[0]
    return {"input": {"name": inp.name, "type": inp.type.WhichOneof("Type"),
                      "width": inp.type.imageType.width, "height": inp.type.imageType.height},
            "outputs": [o.name for o in desc.output], "predicted_label": desc.predictedFeatureName,
            "labels": labels, "metadata": dict(desc.metadata.userDefined),
            "compressed_ops": {k: ops[k] for k in COMPRESSED_OPS if ops[k]}, "ops": sum(ops.values()),
            "compressed_layers": {k: layers[k] for k in COMPRESSED_OPS if layers[k]},
            "activation_quantize_ops": ops["quantize"], "layer_norm_dtypes": dict(norm_types),
            "spec_version": spec.specificationVersion, "size_bytes": package_size(path)}

