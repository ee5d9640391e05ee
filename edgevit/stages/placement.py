"""Where INT8 runs, chosen by measured latency on the runtime an artifact is for (``quantize.placement``).

``auto``, for an INT8 artifact whose runtime a local device profile runs and profiles here:

1. Candidate forms of the lowered plan: as calibrated, and (for an asymmetric plan, when the run has
   evaluation images) with symmetric int8 activations, kept only when its simulated accuracy is within
   ``ACCURACY_SLACK_PTS`` of the calibrated plan's (or within ``max_accuracy_drop`` of FP32; with random
   weights, logit SQNR >= 20 dB against FP32); with ``quantize.conv_output``, each of these also with its
   conv-output quantizers in float (ONNX Runtime's QLinearConv chains gain from them; OpenVINO pays a
   dequantization after every conv: 1.6 of 7.5 ms in its profile of timm mobilevit_xxs). Where the runtime
   lets an artifact store its float layers' precision and the device runs another one natively (OpenVINO on
   a CPU with AMX: bf16), every form is also a candidate with its float layers in that precision, its regions
   judged against the FP32 graph in the same precision, which is timed beside the candidates as a reference
   (``references``), never shipped as INT8. A candidate with no layer left in integers (by the plan, or by
   the runtime's audit of its file), or that the runtime runs further than ``AS_SIMULATED_DB`` from its own
   simulation on a few images, is not timed.
2. Each form's all-INT8 graph and the FP32 graph are exported and profiled by the runtime itself.
   Quantizers the runtime moves into layout ops (ONNX Runtime runs the Transposes above a QuantizeLinear
   on uint8) are dropped, with their layer's weights, when those Transposes take ``CHAIN_SLOWDOWN``
   times their float time: a form "-unchained", profiled again. Then each region's
   (``edgevit.quant.regions``) node time in INT8 is compared with the same region's node time in float;
   regions slower in INT8 are left in float.
3. The candidates (each form all-INT8, unchained, and with its slow regions in float) are timed interleaved with
   the FP32 graph, batch 1. The fastest ships if it beats FP32 by ``MARGIN`` there and again when the two
   are timed alone (twice as many rounds); otherwise
   ``quantize.when_slower`` decides (the FP32 model, or the fastest INT8 anyway), and the report says so.
   A symmetric form is inexact (the runtime rounds it otherwise than the simulation), so are float layers in
   a lower precision than the simulation's, and so is every form with
   8-bit weights where the runtime's integer kernels saturate (a local x86 CPU without VNNI), so before it is
   chosen its file must agree with its simulation on the accuracy images ``AGREEMENT_MARGIN`` above the
   validation's 99 % check; else the next fastest candidate is taken (``refused`` says why).

The device is the deployment target when the recipe has one: an SSH device profile running the artifact's
runtime times the candidates there (the per-region profile, which proposes the float regions, is taken on
this machine when the runtime runs here); else a local profile of the runtime, else the first local one.

Decisions and every measured number go to ``placement.json``; ``placement: <that file>`` replays them
without timing, so the artifact is byte-identical to the one the decision was measured on (``auto``
itself depends on timing: two runs may choose differently). Leaving a region in float is taken to keep
accuracy (it removes quantizers); the artifact is validated against its own simulation anyway.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit.devices.lease import timing_lease
from edgevit.errors import BadInput
from edgevit.quant import apply_plan
from edgevit.quant.lowering import WEIGHT_BITS_IN_INT8, has_nonuniform, lower_plan, plan_bits
from edgevit.quant.regions import node_region, plan_regions, without_regions, without_sites
from edgevit.quant.sites import ActQuant
from edgevit.quant.targets import Lowering
from edgevit.runtimes import for_format
from edgevit.validate import TorchRunner, collect_logits
from edgevit.validate.accuracy import compare_logits
from edgevit.validate.checks import MIN_AGREEMENT, RANDOM_WEIGHTS_SQNR_DB
from edgevit.validate.latency import int8_dot_saturates
from edgevit.validate.profiling import interleaved_medians, rounds_for

log = logging.getLogger("edgevit")
PLACEMENT_FILE = "placement.json"
MARGIN = 0.05  # INT8 ships only when its median is at least 5 % below FP32's, in two interleaved timings
ACCURACY_SLACK_PTS = 0.3  # a symmetric form may cost this many top-1 points against the calibrated plan
PROFILE_RUNS = 30
CHAIN_SLOWDOWN = 1.5  # a layout chain is dropped when its INT8 Transposes take 1.5x their float time (not noise)
SYMMETRIC = Lowering("symmetric", "symmetric int8 activations", symmetric=True, exact=False)
CONV_OUTPUT_KINDS = ("conv_output", "sigmoid_output")
LIKELY = "; likely cause: "
AS_SIMULATED_DB = 20.0  # a candidate the runtime runs further than this from its own simulation is not timed
CHECK_IMAGES = 8
ACCURACY_IMAGES = 1000  # evaluation images a candidate form's accuracy is judged on
# a symmetric form ships only when it agrees with its simulation on the accuracy images this far inside the
# validation's checks (OpenVINO runs the built-in hybrid's symmetric graph at 99.15 % on the 10,000 test images)
AGREEMENT_MARGIN, SQNR_MARGIN_DB = 0.005, 3.0


@dataclass
class Placement:
    """What one INT8 artifact runs in INT8, why, and the numbers the choice was made on."""

    artifact: str
    mode: str  # auto | all | replay
    shipped: str = "int8"  # int8 | fp32
    activations: str = "as calibrated"  # or "symmetric": signed int8, zero point 0, per tensor
    form: str = "as calibrated"  # the shipped form: its activations, and ", conv outputs in float" when dropped
    inference_precision: str | None = None  # the float layers' precision stored in the artifact, when chosen here
    float_regions: list[str] = field(default_factory=list)
    float_sites: list[str] = field(default_factory=list)  # quantizers dropped: layout chains, conv outputs
    runtime: str | None = None
    lowering: str | None = None  # the integer kernels the plan was lowered for (its runtime's, or TensorRT's)
    device: str | None = None
    regions: list[dict] = field(default_factory=list)  # region, kind, sites, int8_ms, float_ms, faster_in, decision
    candidates: dict[str, float] = field(default_factory=dict)  # candidate -> batch-1 median ms (with fp32)
    confirmation: dict[str, float] = field(default_factory=dict)  # the fastest and fp32 timed again, alone
    references: dict[str, float] = field(default_factory=dict)  # the FP32 graph in another precision, timed with them
    forms: list[dict] = field(default_factory=list)  # each activation form tried: accuracy, verdict
    chains: list[dict] = field(default_factory=list)  # costly layout chains: site, transposes, int8_ms, float_ms
    not_timed: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not timed
    refused: dict[str, str] = field(default_factory=dict)  # timed, faster, not shipped: why (``_unlike_simulation``)
    speedup: float | None = None  # FP32 median / the shipped candidate's median
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Placement":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


def slow_regions(int8_ms: dict[str, float], float_ms: dict[str, float]) -> list[str]:
    """The regions whose nodes take longer in the INT8 graph than in the float graph (these stay float)."""
    return [r for r, t in int8_ms.items() if t > float_ms.get(r, 0.0)]


def placed_plan(plan, regions, slow: list[str]):
    """``plan`` with its ``slow`` regions in float, or None when no region is slow or nothing would be left
    quantized (the float model under an INT8 name: on EfficientViT-M0 the regions left after dropping conv
    outputs and layout chains held no quantizer)."""
    placed = without_regions(plan, regions, slow) if slow else None
    return placed if placed is not None and int8_compute(placed) else None


def int8_compute(plan) -> bool:
    """Whether ``plan`` leaves any layer or attention product in integers: a weight quantizer whose layer
    input is quantized too, or attention's quantized Q and K (quantizers alone only round float values)."""
    return any(f"{w}.input" in plan.activations for w in plan.weights) or \
        any(e.kind == "attn_q" for e in plan.activations.values())


def fastest(timings: dict[str, float], fp32: str = "fp32", margin: float = MARGIN) -> tuple[str, bool]:
    """The fastest INT8 candidate of a timing table and whether it beats ``fp32`` by ``margin``."""
    best = min((k for k in timings if k != fp32), key=lambda k: (timings[k], k))
    return best, timings[best] <= timings[fp32] * (1 - margin)


def costly_chains(chains: dict[str, list[str]], int8_ms: dict[str, float], float_ms: dict[str, float],
                  sites: dict[str, str]) -> list[dict]:
    """The layout chains (quantizer module path -> its Transposes, ``Runtime.layout_chains``) whose nodes
    take ``CHAIN_SLOWDOWN`` times longer in the INT8 profile than the same nodes in the float one, as
    records naming the plan site (``sites``: quantizer module path -> site)."""
    out = []
    for module, nodes in chains.items():
        t8, tf = sum(int8_ms.get(n, 0.0) for n in nodes), sum(float_ms.get(n, 0.0) for n in nodes)
        if module in sites and t8 > CHAIN_SLOWDOWN * tf:
            out.append({"site": sites[module], "transposes": nodes, "int8_ms": round(t8, 4), "float_ms": round(tf, 4)})
    return out


def region_times(node_ms: dict[str, float], regions) -> dict[str, float]:
    """Per-node profile times summed by region (nodes in no region are left out)."""
    out = {r: 0.0 for r in regions}
    for node, ms in node_ms.items():
        r = node_region(node, regions)
        if r is not None:
            out[r] += ms
    return out


def apply_placement(plan, placement: Placement, regions) -> object:
    """``plan`` as ``placement`` says: symmetric activations if chosen, its float regions removed."""
    unknown = [r for r in placement.float_regions if r not in regions]
    if unknown:
        raise BadInput(f"placement for {placement.artifact}: region {unknown[0]!r} is not in this model's plan "
                       f"(regions: {', '.join(list(regions)[:6])}, ...); was the placement file made for another "
                       "model or recipe?")
    missing = [s for s in placement.float_sites if s not in plan.activations]
    if missing:
        raise BadInput(f"placement for {placement.artifact}: quantizer {missing[0]!r} is not in this model's plan; "
                       "was the placement file made for another model or recipe?")
    if placement.activations == "symmetric":
        plan = lower_plan(plan, SYMMETRIC, "uniform")
    if placement.float_sites:
        plan = without_sites(plan, placement.float_sites)
    return without_regions(plan, regions, placement.float_regions) if placement.float_regions else plan


def saved_placements(path: Path) -> dict[str, Placement]:
    """The placements a run wrote to its placement.json, by artifact name."""
    try:
        data = json.loads(Path(path).read_text())
        return {name: Placement.from_dict(d) for name, d in data["artifacts"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"quantize.placement: {path} is not a placement.json written by edgevit ({e})") from e


def write_placements(stage: Path, placements: dict[str, Placement]) -> None:
    """placement.json in the run folder (nothing when no INT8 artifact was placed)."""
    if placements:
        (stage / PLACEMENT_FILE).write_text(json.dumps(
            {"format": "edgevit.placement/1", "margin": MARGIN,
             "artifacts": {k: p.to_dict() for k, p in placements.items()}}, indent=1) + "\n")


def place(job, ctx, plan) -> tuple[object | None, Placement]:
    """The plan ``job`` ships (None: the float model) and the placement record, as ``quantize.placement``
    asks; ``plan`` is the run's plan lowered for the job's runtime."""
    qcfg = ctx.recipe.quantize
    rt = for_format(job.cfg.format)
    target = rt.lowering_for(job.cfg)
    if qcfg.placement == "all":
        return plan, Placement(job.name, "all", runtime=rt.name, lowering=target.name,
                               reason="quantize.placement: all (every quantizer, not timed)")
    if qcfg.placement != "auto":
        saved = ctx.saved_placements(qcfg.placement)
        if job.name not in saved:
            raise BadInput(f"quantize.placement: {qcfg.placement} has no entry for artifact {job.name} "
                           f"(it has: {', '.join(saved) or 'none'})")
        p = dataclasses.replace(saved[job.name], mode="replay", lowering=target.name,
                                reason=f"replayed from {qcfg.placement}")
        return (apply_placement(plan, p, plan_regions(ctx.model, plan)) if p.shipped == "int8" else None), p
    devices = ctx.recipe.validation.devices
    local = [d for d in devices if d.kind == "local"]
    # the deployment target first (an SSH device running the artifact's runtime: timed there), else like
    # validation a local profile of the runtime, else the first local profile's threads
    device = next((d for d in devices if d.kind == "ssh" and d.runtime == rt.name), None) or \
        next((d for d in local if d.runtime == rt.name), local[0] if local else None)
    why = None
    if target is not rt.lowering:
        why = f"lowered for {target.label}, which this machine does not time: every quantizer kept"
    elif job.cfg.lowering == "exact" and (has_nonuniform(plan) or min(plan_bits(plan), default=8) < 8):
        return plan, Placement(job.name, "auto", runtime=rt.name, lowering="exact", reason=(
            "lowering: exact writes log/tan or sub-8-bit quantizers as a float decomposition that validates the "
            f"scheme; no {rt.label} integer kernel runs it, so it is not timed against FP32"))
    elif device is None:
        why = "no local device profile: not timed, every quantizer kept"
    elif device.kind == "local" and (not rt.can_run_here() or not rt.profiles):
        why = f"{rt.label} cannot run or profile here: not timed, every quantizer kept"
    if why:
        return plan, Placement(job.name, "auto", runtime=rt.name, lowering=target.name, reason=why)
    # the same plan written as the same graph for the same device: an earlier artifact's search holds
    key = json.dumps([id(job.plan or ctx.plan), rt.name, device.name,
                      job.cfg.model_dump(mode="json", exclude={"name", *rt.storage_fields})], sort_keys=True)
    if key in ctx.searches:
        searched, shipped, first = ctx.searches[key]
        return plan if shipped is searched else shipped, dataclasses.replace(
            first, artifact=job.name, reason=f"{first.reason} (the search made for {first.artifact}, whose graph "
            "is this artifact's)")
    with tempfile.TemporaryDirectory(prefix="edgevit-placement-") as tmp:
        shipped, placement = _search(job, ctx, plan, rt, device, Path(tmp))
    ctx.searches[key] = (plan, shipped, placement)
    return shipped, placement


def _search(job, ctx, plan, rt, device, tmp: Path) -> tuple[object | None, Placement]:
    regions = plan_regions(ctx.model, plan)
    x = _sample(ctx)
    scratch = dataclasses.replace(ctx, stage=tmp)
    files: dict[str, Path] = {}
    p = Placement(job.name, "auto", runtime=rt.name, lowering=rt.lowering.name, device=device.name)
    # the per-region profile is taken here (on the local profile's threads); an SSH device times the candidates
    prof_dev = device if device.kind == "local" else next(
        (d for d in ctx.recipe.validation.devices if d.kind == "local"), device)
    xs = _check_images(ctx)
    saturates = _saturating_kernels(rt, device, plan)
    runners: dict[tuple[Path, str], object] = {}

    def runner(path: Path, dev):
        """One runner of a file on a device for the whole search: the audit, both timings and the agreement
        check share it instead of each compiling the file again (an OpenVINO compile, 0.4 s on average in the
        test suite, longer in bf16; an ONNX Runtime session)."""
        if (path, dev.name) not in runners:
            runners[path, dev.name] = rt.local_runner(path, dev) if rt.can_run_here() else None
        return runners[path, dev.name]

    def export(name: str, source, precision: str, float_in: str | None = None) -> Path | None:
        update = {"precision": precision} | ({"inference_precision": float_in} if float_in else {})
        j = dataclasses.replace(job, cfg=job.cfg.model_copy(update=update), file=f"{name}{rt.suffix}", source=source,
                                suffix="", candidate=True)
        try:
            row = rt.export(j, scratch)
        except RuntimeError as e:  # OpenVINO 2026.4 cannot compile some INT8 IRs in bf16 that it compiles in f32
            if not float_in or precision != "int8":
                raise
            p.not_timed[name] = f"{rt.label} cannot compile it with its float layers in {float_in} " \
                f"({rt.error_reason(e)})"
            log.warning("placement %s: candidate %s not timed: %s", job.name, name, p.not_timed[name])
            return None
        why = _not_a_candidate(rt, row, lambda: runner(tmp / j.file, prof_dev), source, xs, saturates) \
            if precision == "int8" else None
        if why:
            p.not_timed[name] = why
            log.warning("placement %s: candidate %s not timed: %s", job.name, name, why)
        else:
            files[name] = tmp / j.file
        return tmp / j.file

    can_profile = rt.profiles and rt.can_run_here()

    def timed_profile(path: Path) -> dict[str, float]:
        with timing_lease(prof_dev, "placement profile"):
            return rt.profile(path, prof_dev, x, PROFILE_RUNS)

    profile = timed_profile if can_profile else None
    fp32_path = export("fp32", ctx.model, "fp32")
    # without a profile every region counts as faster in INT8: the candidates are the activation forms only
    fp32_nodes = profile(fp32_path) if profile else {}
    plans: dict[str, object] = {}
    # keyed by (activation form, the precision its float layers run in; None: the export's own)
    tables: dict[tuple, dict[str, float]] = {}  # region -> INT8 node ms
    float_by: dict[str | None, dict[str, float]] = {}  # float precision -> region -> the FP32 graph's node ms
    chains: dict[tuple, list[dict]] = {}  # its costly layout chains
    form_of: dict[str, tuple] = {}  # candidate -> its key
    references: list[str] = []  # the FP32 graph in another precision: timed beside the candidates, never shipped

    def add(name: str, candidate, key: tuple) -> tuple[Path | None, object]:
        plans[name], form_of[name] = candidate, key
        qmodel = apply_plan(ctx.model, candidate)
        return export(name, qmodel, "int8", key[1]), qmodel

    forms = _forms(ctx, plan, p, rt)
    # the export's own float precision, then each other one the device runs natively (OpenVINO on AMX: bf16)
    for float_in in [None, *rt.float_precisions(job.cfg, device)]:
        tag, float_nodes = f"-{float_in}" if float_in else "", fp32_nodes
        if float_in:
            references.append(f"fp32{tag}")
            reference = export(references[-1], ctx.model, "fp32", float_in)
            float_nodes = profile(reference) if profile else {}
        float_ms = float_by[float_in] = region_times(float_nodes, regions)
        for form, (name, form_plan) in forms.items():
            key, name = (form, float_in), name.replace("int8", f"int8{tag}", 1)
            path, qmodel = add(name, form_plan, key)
            if path is None:
                continue
            nodes = profile(path) if profile else {}
            chains[key] = costly_chains(rt.layout_chains(path), nodes, float_nodes, _quantizer_sites(qmodel)) \
                if profile else []
            tables[key] = region_times(nodes, regions)
            if chains[key]:  # the form without them, profiled again for the per-region decision
                name, form_plan = name + "-unchained", without_sites(form_plan, [c["site"] for c in chains[key]])
                path = add(name, form_plan, key)[0]
                if path is None:
                    continue
                tables[key] = region_times(profile(path), regions)
            placed = placed_plan(form_plan, regions, slow_regions(tables[key], float_ms))
            if placed is not None:
                add(name + "-placed", placed, key)
    timer = _device_timer(device, ctx.info, x) if device.kind == "ssh" else _local_timer(runner, device, x)
    if not any(k in plans for k in files):  # every INT8 candidate was refused: FP32 ships (when_slower does not apply)
        return None, _fp32_ships(p, "no INT8 candidate could be timed", p.not_timed)
    p.candidates = {k: round(v, 4) for k, v in timer(files, 1).items()}
    p.references = {k: p.candidates.pop(k) for k in references if k in p.candidates}
    while True:  # the fastest candidate that runs as simulated
        left = {k: v for k, v in p.candidates.items() if k not in p.refused}
        if len(left) == 1:
            return None, _fp32_ships(p, "no INT8 candidate runs as simulated", p.refused)
        best, faster = fastest(left)
        form, float_in = form_of[best]
        inexact = " and ".join(filter(None, ("a symmetric form" if form.startswith("symmetric") else None,
                                             f"float layers in {float_in}" if float_in else None, saturates)))
        why = _unlike_simulation(ctx, rt, runner(files[best], prof_dev), plans[best], inexact) if inexact else None
        if why is None:
            break
        p.refused[best] = why
        log.warning("placement %s: candidate %s not shipped: %s", job.name, best, why)
    if faster:  # a second timing of the two alone, twice as long: both must show the margin
        again = timer({best: files[best], "fp32": files["fp32"]}, 2)
        p.confirmation = {k: round(v, 4) for k, v in again.items()}
        faster = fastest(again)[1]
    chosen, key = plans[best], form_of[best]
    p.inference_precision = float_in
    p.form = form + (f", float layers in {float_in}" if float_in else "")
    p.activations = "symmetric" if form.startswith("symmetric") else "as calibrated"
    p.float_regions = list(chosen.float_regions[len(plan.float_regions):])
    p.float_sites = list(chosen.float_sites[len(plan.float_sites):])
    p.chains = chains[key]
    p.speedup = round(p.candidates["fp32"] / p.candidates[best], 3)
    p.shipped = "int8" if faster else ctx.recipe.quantize.when_slower
    slow = set(slow_regions(tables[key], float_by[float_in]))
    p.regions = [{"region": r.name, "kind": r.kind, "sites": r.sites,
                  "int8_ms": round(tables[key][r.name], 4), "float_ms": round(float_by[float_in][r.name], 4),
                  "faster_in": "float" if r.name in slow else "int8",
                  "decision": "float" if r.name in p.float_regions or p.shipped == "fp32" else "int8"}
                 for r in regions.values()]
    summary = f"{best} {p.candidates[best]:.3f} ms vs FP32 {p.candidates['fp32']:.3f} ms ({p.speedup:.2f}x)" + (
        f", timed again {p.confirmation[best]:.3f} vs {p.confirmation['fp32']:.3f} ms" if p.confirmation else "")
    summary += "".join(f"; faster still: the FP32 graph with every layer in {k.split('-', 1)[1]}, {v:.3f} ms "
                       f"(an export with precision: {k.split('-', 1)[1]})"
                       for k, v in p.references.items() if v < p.candidates[best])
    if faster:
        p.reason = f"fastest INT8 candidate beats FP32 by more than {100 * MARGIN:g} %: {summary}"
        log.info("placement %s: %s", job.name, p.reason)
        return chosen, p
    when = p.shipped
    # timed on another runtime's local profile when none runs this one: its threads, not its runtime
    where = device.name if device.runtime == rt.name else \
        f"this machine in {rt.label}, with {device.name}'s threads"
    p.reason = (f"no INT8 placement beats FP32 by {100 * MARGIN:g} % on {where} (best: {summary}); "
                f"quantize.when_slower: {when} shipped the {'FP32 model' if when == 'fp32' else 'fastest INT8'}")
    log.warning("placement %s: %s", job.name, p.reason)
    return (chosen if when == "int8" else None), p


def _fp32_ships(p: Placement, why: str, candidates: dict[str, str]) -> Placement:
    """``p`` saying the FP32 model ships because no INT8 candidate may (``candidates``: each one's reason; a
    likely cause they all share is said once, at the end)."""
    causes = {v.partition(LIKELY)[2] for v in candidates.values()}
    shared = causes.pop() if len(causes) == 1 else ""
    p.shipped, p.reason = "fp32", f"{why}: " + "; ".join(
        f"{k}: {v.partition(LIKELY)[0] if shared else v}" for k, v in candidates.items()) + (
        f"{LIKELY}{shared}" if shared else "")
    log.warning("placement %s: %s", p.artifact, p.reason)
    return p


def _local_timer(runner, device, x: np.ndarray):
    """Batch-1 medians of artifact files on this machine, interleaved (``scale``: relative length);
    ``runner(path, device)`` gives each file's runner."""
    def time_files(files: dict[str, Path], scale: int) -> dict[str, float]:
        runners = {k: runner(f, device) for k, f in files.items()}
        with timing_lease(device, "placement"):
            rounds = scale * rounds_for(runners["fp32"], x[:1], len(runners))
            return interleaved_medians(runners, x[:1], rounds, seed=scale)
    return time_files


def _device_timer(device, info, x: np.ndarray):
    """Batch-1 medians of artifact files on an SSH device, timed there in one session (interleaved)."""
    from edgevit.devices.remote import measure_remote

    def time_files(files: dict[str, Path], scale: int) -> dict[str, float]:
        dev = device.model_copy(update={"iters": scale * device.iters, "throughput_batch": 1})
        with timing_lease(device, "placement"):
            out = measure_remote(dev, list(files.items()), x[:1], None, info)
        return {k: float(out["artifacts"][k]["batch1"]["median_ms"]) for k in files}
    return time_files


def _quantizer_sites(qmodel) -> dict[str, str]:
    """Module path of each activation quantizer of a fake-quant model -> its plan site (the ONNX exporter
    names a QuantizeLinear after the module path)."""
    return {module: q.site for module, q in qmodel.named_modules() if isinstance(q, ActQuant)}


def _not_a_candidate(rt, row: dict, make_runner, qmodel, x: np.ndarray, saturates: str | None) -> str | None:
    """Why an exported INT8 candidate must not be timed (None: it may): the runtime's audit of the file finds no
    integer layer (the float model under an INT8 name), or the runtime runs it further than
    ``AS_SIMULATED_DB`` from its own simulation (OpenVINO 2026.4 runs EfficientViT-M0's INT8 graph without
    conv-output quantizers 1.1 dB from it: leaving quantizers out does not always keep accuracy); ``saturates``
    (:func:`_saturating_kernels`) is then named as the likely cause."""
    if rt.int8_layers(row) == 0:
        return f"{rt.label} runs no layer of it in INT8"
    runner = make_runner()
    if runner is None:  # it cannot run here
        return None
    sqnr = compare_logits(runner(x), collect_logits(TorchRunner(qmodel), x, len(x)))["sqnr_db"]
    if sqnr < AS_SIMULATED_DB:
        return f"{rt.label} runs it {sqnr:.1f} dB from its simulation (needs >= {AS_SIMULATED_DB:g} dB)" + (
            f"{LIKELY}{saturates}" if saturates else "")
    return None


def _saturating_kernels(rt, device, plan) -> str | None:
    """Why every INT8 candidate of ``plan`` may run otherwise than its simulation on this machine (None: only a
    symmetric form may): the runtime's x86 integer kernels saturate on a CPU without VNNI once weights use 8 bits
    (see :func:`int8_dot_saturates`). An SSH device's CPU is not known here."""
    if not rt.int8_kernels_saturate or device.kind != "local" or not int8_dot_saturates():
        return None
    if max((q.bits for q in plan.weights.values()), default=8) <= WEIGHT_BITS_IN_INT8:
        return None
    return "an INT8 file with 8-bit weights on a CPU without VNNI (its uint8 x int8 kernels saturate; " \
        "7-bit weights, quantize.weights.overflow_fix: on, avoid it)"


def _unlike_simulation(ctx, rt, runner, plan, inexact: str) -> str | None:
    """Why the runtime's file of an inexact form (``inexact`` says which: symmetric activations, or 8-bit weights
    where the CPU's kernels saturate) must not ship: on the accuracy images it agrees with its simulation less than
    ``AGREEMENT_MARGIN`` above the validation's minimum (random weights: logit SQNR less than ``SQNR_MARGIN_DB``
    above its threshold). None: it may ship, or cannot run here (``runner`` None)."""
    if runner is None or ctx.evalset is None:
        return None
    ev = ctx.evalset
    x = ev.x[:ACCURACY_IMAGES]
    c = compare_logits(collect_logits(runner, x, ev.batch_size),
                       collect_logits(TorchRunner(apply_plan(ctx.model, plan)), x, ev.batch_size))
    if ctx.info.random_weights:
        need = RANDOM_WEIGHTS_SQNR_DB + SQNR_MARGIN_DB
        return None if c["sqnr_db"] >= need else \
            f"{rt.label} runs it {c['sqnr_db']:.1f} dB from its simulation on {len(x)} images ({inexact} " \
            f"needs >= {need:g} dB)"
    need = MIN_AGREEMENT + AGREEMENT_MARGIN
    return None if c["top1_agreement"] >= need else \
        f"{rt.label} agrees with its simulation on {100 * c['top1_agreement']:.1f} % of {len(x)} images " \
        f"({inexact} needs >= {100 * need:g} %)"


def _check_images(ctx) -> np.ndarray:
    """The images each candidate is compared with its simulation on."""
    if ctx.evalset is not None:
        return ctx.evalset.x[:CHECK_IMAGES]
    return ctx.calibration_images(CHECK_IMAGES).numpy()[:CHECK_IMAGES]


def _sample(ctx) -> np.ndarray:
    """The image the graphs are profiled and timed on (batch 1)."""
    if ctx.evalset is not None:
        return ctx.evalset.x[:1]
    return ctx.calibration_images(1).numpy()[:1]


def conv_output_sites(plan) -> list[str]:
    """The plan's quantizers of conv outputs and of SiLU's sigmoid (``quantize.conv_output``)."""
    return [s for s, e in plan.activations.items() if e.kind in CONV_OUTPUT_KINDS]


def _forms(ctx, plan, p: Placement, rt) -> dict[str, tuple[str, object]]:
    """The forms worth timing, as form -> (candidate name, plan): the plan as calibrated, symmetric int8
    where its simulated accuracy holds and the runtime runs it as simulated (see the module docstring),
    and each of these with its conv outputs in float when the plan quantizes them (ONNX Runtime's
    QLinearConv chains gain from them; OpenVINO pays a dequantization of every conv output)."""
    forms = {"as calibrated": ("int8", plan)}
    sym = _symmetric(ctx, plan, p, rt)
    if sym is not None:
        forms["symmetric"] = ("int8-symmetric", sym)
    conv = conv_output_sites(plan)
    if conv:
        for form, (name, form_plan) in list(forms.items()):
            forms[f"{form}, conv outputs in float"] = (f"{name}-convfloat", without_sites(form_plan, conv))
    return forms


def _symmetric(ctx, plan, p: Placement, rt):
    """The plan with symmetric int8 activations when its accuracy holds and the runtime runs it as simulated
    (None otherwise; why is in ``p.forms``)."""
    if plan.config.activations.symmetric or ctx.evalset is None or not plan.activations or has_nonuniform(plan):
        return None
    try:
        sym = lower_plan(plan, SYMMETRIC, "uniform")
    except ValueError as e:  # asymmetric weights, sub-8-bit quantizers: no integer kernel runs it symmetric
        p.forms.append({"activations": "symmetric", "tried": False, "why": str(e)})
        return None
    ok, facts = _accuracy_holds(ctx, plan, sym)
    p.forms.append({"activations": "symmetric", **facts, "tried": ok})
    return sym if ok else None


def _accuracy_holds(ctx, plan, candidate) -> tuple[bool, dict]:
    """Whether ``candidate``'s simulation keeps the accuracy of ``plan``'s (top-1 on labeled images,
    agreement with FP32's top-1 on unlabeled ones, logit SQNR with random weights)."""
    ev = ctx.evalset
    x = ev.x[:ACCURACY_IMAGES]

    def logits(m) -> np.ndarray:
        return collect_logits(TorchRunner(m), x, ev.batch_size)

    fp, base, cand = logits(ctx.model), logits(apply_plan(ctx.model, plan)), logits(apply_plan(ctx.model, candidate))
    if ctx.info.random_weights:
        sqnr = compare_logits(cand, fp)["sqnr_db"]
        return sqnr >= RANDOM_WEIGHTS_SQNR_DB, {"sqnr_db_vs_fp32": round(sqnr, 2)}
    labels = ev.labels[:len(x)] if ev.labels is not None else fp.argmax(1)
    top1 = {k: float((v.argmax(1) == labels).mean() * 100) for k, v in
            (("fp32", fp), ("calibrated", base), ("candidate", cand))}
    budget = ctx.recipe.quantize.max_accuracy_drop
    ok = top1["fp32"] - top1["candidate"] <= budget if budget is not None else \
        top1["calibrated"] - top1["candidate"] <= ACCURACY_SLACK_PTS
    return ok, {"top1": round(top1["candidate"], 2), "calibrated_top1": round(top1["calibrated"], 2),
                "fp32_top1": round(top1["fp32"], 2), "images": int(len(x))}
