"""What a runtime declares, and the registry that maps recipe names to runtimes.

A runtime module (``edgevit/runtimes/<name>.py``) defines one export config class (the recipe's
``export:`` entry for its ``format``) and one :class:`Runtime` subclass registered with
:func:`register`: how an artifact is written, how its INT8 plan is lowered, which checks it adds,
what runs it here and which file runs it on a device (``edgevit/runtimes/device/<name>_runner.py``). The
pipeline, the recipe schema, the device runner, ``edgevit bench`` and the report look runtimes up
here instead of comparing names.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgevit.paths import cut
from edgevit.quant.targets import Lowering

DEVICE_RUNNERS = Path(__file__).with_name("device")


class ExportBase(BaseModel):
    """Fields every exported artifact has."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    lowering: Literal["uniform", "exact", "float"] = Field(
        "uniform", description="int8 only: how quantizers no integer kernel runs are written: uniform (log/tan "
        "sites become the uniform 8-bit grid over their range), exact (a float decomposition that reproduces "
        "the simulation, also for 4/6-bit plans; only where the runtime runs float ops) or float (log/tan sites "
        "left unquantized)")
    fp16_layernorm: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="FP16 artifacts (onnx fp16, coreml, tensorrt): auto keeps LayerNorm in FP32 when its "
        "inputs, measured on the calibration (else eval) images, overflow FP16's range (or when there are no images "
        "to measure); fp32 always; fp16 never")

    def sub8bit_problem(self, key: str, bits: int, index: int) -> str | None:
        """Why this artifact cannot hold a ``bits``-bit quantizer (None: it can). 7-bit weights are int8 codes in
        -63..63 (x86 int8 kernels without VNNI cannot saturate on them), which int8 kernels run as they are."""
        from edgevit.quant.lowering import WEIGHT_BITS_IN_INT8

        if self.lowering != "exact" and not (key.endswith("weights.bits") and bits == WEIGHT_BITS_IN_INT8):
            return (f"{key}: {bits}-bit can be simulated, but ONNX Runtime and TensorRT run 8-bit integer kernels "
                    f"only; set export.{index}.lowering: exact to export a graph that reproduces the simulation, "
                    "or quantize with 8 bits")
        return None


class OnnxGraphFields(BaseModel):
    """How the ONNX graph behind an artifact is written (ONNX files, and the graphs engines are built from)."""

    opset: int = Field(17, ge=17, le=21)
    simplify: bool = True
    dynamic_batch: bool = True


class Runtime:
    """One runtime: subclass, set the class attributes, implement what applies, decorate with @register."""

    name: ClassVar[str]  # the row's and the device profile's ``runtime``
    label: ClassVar[str]  # for people: "ONNX Runtime"
    format: ClassVar[str]  # the recipe's export ``format``
    suffix: ClassVar[str]  # the artifact's file suffix
    config: ClassVar[type[ExportBase]]
    file_kind: ClassVar[str] = "artifact"  # "FP32 ONNX", "FP32 IR": what check names call the FP32 file
    file_noun: ClassVar[str] = "artifact"  # "ONNX", "OpenVINO IR": in "not a readable ... file"
    short: ClassVar[str] = ""  # "ORT": in check names and details
    other_suffixes: ClassVar[tuple[str, ...]] = ()  # further artifact suffixes it runs (ONNX Runtime: .ort)
    # export config fields that choose how the graph is stored, not the graph: INT8 candidates are timed without
    # them, so two artifacts differing only in these share one placement search
    storage_fields: ClassVar[tuple[str, ...]] = ()
    lowering: ClassVar[Lowering | None] = None
    device_runner: ClassVar[str | None] = None  # file under runtimes/device/ that runs it on a device
    platforms: ClassVar[tuple[str, ...]] = ("linux", "darwin", "win32")  # where it can predict
    local_device: ClassVar[bool] = False  # whether a `kind: local` device profile may name it
    profiles: ClassVar[bool] = False  # whether profile() gives per-node times (INT8 placement needs them)
    # whether its x86 int8 kernels compute otherwise than the exact sums on a CPU without VNNI (16-bit pair sums)
    int8_kernels_saturate: ClassVar[bool] = False

    def file_suffix(self, cfg: ExportBase) -> str:
        """The suffix of the file an export entry writes (``suffix`` unless the config picks another form)."""
        return self.suffix

    def lowering_for(self, cfg: ExportBase) -> Lowering | None:
        """The plan lowering an int8 artifact of this config uses."""
        return self.lowering

    def runs_fp16(self, cfg: ExportBase) -> bool:
        """Whether the artifact computes in FP16 somewhere (and so needs the LayerNorm policy)."""
        return False

    def unavailable(self, cfg: ExportBase | None = None) -> str | None:
        """Why this runtime's artifacts cannot be written here (a missing package, no GPU), or None."""
        return None

    def export(self, job: Any, ctx: Any) -> dict:
        """Write ``job``'s artifact into the run folder; returns its result row (see edgevit.stages.export).
        A row's ``export.details`` (a list of Markdown lines) is what the report says of the artifact."""
        raise NotImplementedError

    def local_runner(self, path: Path, device: Any) -> Callable | None:
        """A callable (NCHW float32 batch -> logits) running the artifact here, or None when it cannot run here."""
        return None

    def profile(self, path: Path, device: Any, x: Any, runs: int) -> dict[str, float]:
        """Mean milliseconds per call of each node the runtime ran on ``x``, by the node's name in the
        exported graph (fused nodes under the name of a node they replaced)."""
        raise NotImplementedError

    def layout_chains(self, path: Path) -> dict[str, list[str]]:
        """Activation quantizers of an INT8 artifact that the runtime moves into layout ops (Transposes it
        then runs on integers), by quantizer module path -> those nodes' names; none unless a runtime says."""
        return {}

    def float_precisions(self, cfg: ExportBase, device: Any) -> list[str]:
        """Precisions other than the export's own that an INT8 artifact's float layers may be stored to run in on
        ``device``, when the runtime lets the artifact choose and the device runs them natively (the placement
        times each); empty: no choice."""
        return []

    def error_reason(self, error: Exception) -> str:
        """The runtime's error on one line, for a report (an OpenVINO error without its chain of source lines)."""
        return cut(" ".join(str(error).split()), 300)

    def can_run_here(self) -> bool:
        """Whether this machine can run the runtime's artifacts (its OS, its package, its GPU)."""
        return sys.platform in self.platforms and self.unavailable() is None

    def read_metadata(self, path: Path) -> dict[str, str]:
        """The preprocessing and labels edgevit stamped into the artifact (JSON-encoded values)."""
        return {}

    def input_shape(self, runner: Any) -> list:
        """The input shape a local runner reports (for artifacts without edgevit's metadata)."""
        return []

    def files(self, path: Path) -> list[Path]:
        """What is copied to a device for the artifact: the file or package folder, and any file it reads
        beside it (an IR's weights)."""
        return [path]

    def int8_layers(self, row: dict) -> int | None:
        """How many compute layers the runtime runs in integers in an exported INT8 artifact (from its
        export facts), or None when the runtime does not say."""
        return None

    def checks(self, row: dict) -> list[dict]:
        """Checks of this runtime's own (beside the parity and agreement checks every artifact gets)."""
        return []


RUNTIMES: dict[str, Runtime] = {}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a runtime known to recipes, the pipeline, devices and reports."""
    RUNTIMES[cls.name] = cls()
    return cls


def runtime(name: str) -> Runtime:
    """The runtime called ``name`` (a row's or a device's ``runtime``)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r} (known: {', '.join(sorted(RUNTIMES))})") from None


def for_format(fmt: str) -> Runtime:
    """The runtime whose export ``format`` is ``fmt``."""
    for rt in RUNTIMES.values():
        if rt.format == fmt:
            return rt
    raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(sorted(formats()))})")


def formats() -> dict[str, type[ExportBase]]:
    """Export format -> its config class."""
    return {rt.format: rt.config for rt in RUNTIMES.values()}


def for_suffix(suffix: str) -> Runtime | None:
    """The runtime that runs artifacts with this file suffix, or None."""
    return next((rt for rt in RUNTIMES.values() if suffix in (rt.suffix, *rt.other_suffixes)), None)
