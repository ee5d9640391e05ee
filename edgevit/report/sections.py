"""Report sections of the stages: the granularity search, block reconstruction, the accuracy budget, pruning,
token reduction."""
from __future__ import annotations


def search_lines(plan: dict) -> list[str]:
    """The granularity/scheme search's choices with the bridge blocks it used, and the depthwise inputs given
    per-channel ranges (empty when neither ran)."""
    chosen: dict[str, int] = {}
    depthwise = 0
    for site in plan["activations"].values():
        if site.get("search") == "depthwise-channel":
            depthwise += 1
        elif "granularity" in site:
            key = f"{site['granularity']} / {site['scheme']}"
            chosen[key] = chosen.get(key, 0) + 1
    lines = []
    if depthwise:
        lines += [f"Depthwise conv inputs with per-channel ranges (each channel clipped for its own squared error): "
                  f"{depthwise}.", ""]
    if chosen:
        lines += ["Activation granularity and scheme chosen per layer (against layer or bridge-block output error): " +
                  ", ".join(f"{k}: {n}" for k, n in sorted(chosen.items())) + ".", ""]
    if not lines:
        return []
    if plan.get("bridge_blocks"):
        lines += ["| bridge block | layers | transitions |", "|---|---|---|"]
        lines += [f"| `{b['name']}` | {b['layers']} | {'; '.join(b['transitions'])} |" for b in plan["bridge_blocks"]]
        lines.append("")
    return lines


def reconstruction_lines(plan: dict) -> list[str]:
    """What block reconstruction learned: per block the output error with nearest rounding and after."""
    blocks = plan.get("reconstruction") or []
    if not blocks:
        return []
    learned = [b for b in blocks if b["kept"] == "learned"]
    steps = sum(b.get("activation_steps", 0) for b in learned)
    biases = sum(b.get("biases", 0) for b in learned)
    calibrated = sum(1 for b in learned if b.get("activation_steps_tried") and not b.get("activation_steps"))
    cfg = plan["config"]["reconstruct"]
    kept = ["weight rounding"] + ([f"{steps} activation steps"] if steps else []) + \
        ([f"{biases} layer biases"] if biases else [])
    lines = [f"Block reconstruction ({cfg['iters']} Adam steps per block on {cfg['images']} calibration images, "
             f"QDrop {cfg['drop_prob']:g}): {len(learned)} of {len(blocks)} blocks keep their learned "
             + (", ".join(kept[:-1]) + " and " + kept[-1] if len(kept) > 1 else kept[0])
             + (f" ({calibrated} of them with their calibrated activation steps: the learned ones reconstructed "
                "them worse)" if calibrated else "")
             + ("; the others keep nearest rounding, calibrated steps and float biases (learning reconstructed them "
                "worse)" if len(learned) < len(blocks) else "") + ". Block output error (summed squares per image):",
             "",
             "| block | layers | nearest rounding | learned | kept |", "|---|---|---|---|---|"]
    lines += [f"| `{b['unit']}` | {b['layers']} | {b['loss_nearest']:.4g} | {b['loss_after']:.4g} | {b['kept']} |"
              for b in blocks]
    return lines + [""]


def fallback_lines(f: dict | None) -> list[str]:
    """What the accuracy-budget fallback kept in float and what it measured."""
    if not f:
        return []
    head = (f"Accuracy budget {f['budget_pts']:g} pts (top-1 on the evaluation images, {f['labels']}): float "
            f"{f['fp32_top1']:.2f} %, all layers quantized {f['quantized_top1']:.2f} %")
    if not f["float_layers"]:
        return [head + ": within budget, no layer kept in float.", ""]
    tried = ", ".join(f"{t['float_layers']} in float: {t['top1']:.2f} %" for t in f["tried"])
    lines = [head + f"; {len(f['float_layers'])} most sensitive layer(s) kept in float: {f['final_top1']:.2f} % "
             f"({'within' if f.get('met') else 'NOT within'} budget; tried {tried}). The `-before-fallback` "
             "artifact is the all-quantized model, for the latency cost.", ""]
    lines += ["| layer kept in float | sensitivity (KL reduction) |", "|---|---|"]
    lines += [f"| `{name}` | {f['sensitivity'][name]:.4g} |" for name in f["float_layers"]]
    return lines + [""]


def placement_lines(results: list[dict]) -> list[str]:
    """Where each INT8 artifact runs INT8: the decision, the timed candidates and the per-region profile."""
    lines = []
    for r in results:
        p = r.get("placement")
        if not p:
            continue
        chained = {c["site"] for c in p.get("chains", [])}
        unchained = [s for s in p.get("float_sites", []) if s in chained]
        lines += [f"INT8 placement of `{r['name']}` ({p['mode']}): shipped {p['shipped'].upper()}"
                  + (f", activations {p.get('form', p['activations'])}" if p["shipped"] == "int8" else "")
                  + (f", {len(p['float_regions'])} region(s) left in float" if p["float_regions"] else "")
                  + (f", {len(unchained)} quantizer(s) above layout Transposes dropped" if unchained else "")
                  + f". {p['reason']}.", ""]
        if p.get("chains"):
            lines += ["Quantizers the runtime would move up into Transposes that then run slower on integers "
                      "(INT8 / float node ms): " + ", ".join(
                          f"`{c['site']}` {c['int8_ms']:.3f} / {c['float_ms']:.3f}" for c in p["chains"])
                      + (" - dropped in the shipped form." if unchained else
                         " - kept: the form without them was not the fastest."), ""]
        if p.get("not_timed"):
            lines += ["Candidates not timed: " + "; ".join(f"{k}: {v}" for k, v in p["not_timed"].items()) + ".", ""]
        if p.get("candidates"):
            lines += ["Candidates timed interleaved on `" + str(p["device"]) + "` (batch 1, median ms): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in p["candidates"].items()) + "." + (
                          " Timed again, the fastest and FP32 alone: " + ", ".join(
                              f"{k} {v:.3f}" for k, v in p["confirmation"].items()) + "." if p.get("confirmation")
                          else "") + (
                          " Timed with them, not INT8: " + ", ".join(
                              f"{k} {v:.3f}" for k, v in p["references"].items()) + "." if p.get("references")
                          else ""), ""]
        if p.get("refused"):
            lines += ["Faster candidates not shipped: " + "; ".join(f"{k}: {v}" for k, v in p["refused"].items())
                      + ".", ""]
        if p.get("regions"):
            lines += ["| region | kind | quantizers | INT8 node time (ms) | float node time (ms) | faster in | shipped |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| `{g['region']}` | {g['kind']} | {g['sites']} | {g['int8_ms']:.3f} | {g['float_ms']:.3f} | "
                      f"{g.get('faster_in', '')} | {g['decision']} |" for g in p["regions"]]
            lines += ["", "Node times are the runtime's own profile of the all-INT8 and the FP32 graph, summed over "
                          "each region's nodes. Decisions are in `placement.json`.", ""]
    return lines


def pruning_lines(p: dict | None) -> list[str]:
    """The pruning section: what was pruned, how much, and what was left dense and why."""
    if not p:
        return []
    s = p["summary"]
    lines = ["## Pruning", ""]
    if p["method"] == "nm":
        what = f"{p['pattern']} semi-structured sparsity ({p['criterion']}) on {len(p['layers'])} layers"
    elif p["method"] == "block":
        block = p["block"] if isinstance(p["block"], str) else "x".join(map(str, p["block"]))
        what = (f"block pruning ({block} blocks, {p['criterion']} scores, {p['allocation']} allocation) of "
                f"{len(p['layers'])} layers: {100 * p['achieved']:.1f} % of their weights removed "
                f"(target {100 * p['target']:.0f} %)")
    else:
        what = (f"structured pruning ({p['criterion']}): {len(p['modules'])} modules shrunk "
                f"({100 * p['mlp_hidden']:.0f} % of MLP hidden units, {100 * p['heads']:.0f} % of heads, "
                f"{100 * p['conv_hidden']:.0f} % of conv hidden channels)")
    lines += [f"{what}, on {p['images']} calibration images in {p['seconds']} s. Parameters "
              f"{p['params_before']:,} -> {s['params']:,}; {100 * s['weight_sparsity']:.1f} % of Linear/Conv "
              "weights are zero.", ""]
    a = p.get("choice")
    if a:
        taken = sum(r["pruned"] for r in a["layers"])
        lines += [f"Layers chosen by gain per cost: {taken} of {len(a['layers'])} eligible layers pruned, "
                  f"{100 * a['gain_kept'] / max(a['gain_total'], 1):.0f} % of their {a['gain_unit']} "
                  f"({a['gain_why']}); the pruned model's top-1 differs from the unpruned model's on "
                  f"{a['disagreement']:.2f} % of {a['images']} calibration images (allowed "
                  f"{a['max_disagreement']:g} %). Cost: KL of the logits when the layer alone is pruned.", "",
                  "| layer | gain | cost (KL) | disagreement with it | pruned |", "|---|---|---|---|---|"]
        ranked = sorted(a["layers"], key=lambda r: -r["gain_per_cost"])
        lines += [f"| {r['layer']} | {r['gain']:,} | {r['cost_kl']:.2e} | {r['disagreement_if_pruned']:.2f} % | "
                  f"{'yes' if r['pruned'] else 'no'} |" for r in ranked]
        lines.append("")
    rec = p.get("reconstruction")
    if rec:
        kept = sum(b["kept"] for b in rec["blocks"])
        lines += [f"Block reconstruction ({rec['iters']} Adam steps per block, zeros fixed): {kept} of "
                  f"{len(rec['blocks'])} blocks refitted; top-1 disagreement with the unpruned model on the "
                  f"calibration images {rec['disagreement_before']:.2f} % -> {rec['disagreement_after']:.2f} %.",
                  ""]
    if p["method"] == "block":
        lines += ["| layer | shape | sparsity |", "|---|---|---|"]
        lines += [f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {100 * r['sparsity']:.0f} % |"
                  for r in p["layers"]]
        lines.append("")
    if p["method"] == "structured":
        lines += ["| module | kind | kept / total |", "|---|---|---|"]
        lines += [f"| {r['module']} | {r['kind']} | {r['kept']} / {r['units']} |" for r in p["modules"]]
        lines.append("")
    skipped = p.get("skipped") or {}
    if skipped:
        lines += [f"Left dense ({len(skipped)} layers):", ""]
        lines += [f"- `{name}`: {why}" for name, why in list(skipped.items())[:20]]
        if len(skipped) > 20:
            lines.append(f"- ... and {len(skipped) - 20} more (report.json)")
        lines.append("")
    return lines


def token_lines(t: dict | None) -> list[str]:
    """The token-reduction section: tokens per block in each stage and the FLOPs saved."""
    if not t:
        return []
    how = "ToMe bipartite merging" if t["method"] == "tome" else "EViT pruning (attention-ranked, rest fused)"
    lines = ["## Token reduction", ""]
    choice = t.get("choice") or []
    if choice:
        measured = "disagreement_alone" in choice[0]
        timed = any("time_saving" in r for r in choice)
        lines += ["Each attention stage reduced alone" + (" (cost: top-1 disagreement with the unreduced model on the "
                  "calibration images)" if measured else "") + ":", "",
                  "| stage | rate: FLOPs saved" + (" / disagreement" if measured else "") + " |"
                  + (" time saved at the chosen rate, batch 1 / throughput |" if timed else "") + " reduced |",
                  "|---|---|" + ("---|" if timed else "") + "---|"]
        for r in choice:
            tried = "; ".join(f"{o['r']}: {100 * o['flop_saving']:.1f} %" +
                              (f" / {o['disagreement_alone']:.2f} %" if measured else "") for o in r["options"])
            saved = r.get("time_saving")
            lines.append(f"| `{r['stage']}` | {tried} | " + (
                (f"{100 * saved['batch1']:.1f} % / {100 * saved['throughput']:.1f} % | " if saved else "not timed | ")
                if timed else "") + (f"yes, r={r['r_chosen']}" if r["reduced"] else f"no: {r['why']}") + " |")
        lines.append("")
    timing = t.get("timing") or {}
    if "not_timed" in timing:
        lines += [f"Not timed ({timing['not_timed']}): FLOPs decided which stages reduce tokens.", ""]
    elif "time_saving" in timing:
        before, after, saved = timing["unreduced_ms"], timing["reduced_ms"], timing["time_saving"]
        lines += [f"Timed as FP32 artifacts on {timing['where']}: unreduced {before['batch1']:.3f} ms / "
                  f"{before['throughput']:.2f} ms, with the stages reduced {after['batch1']:.3f} ms / "
                  f"{after['throughput']:.2f} ms ({100 * saved['batch1']:.1f} % / {100 * saved['throughput']:.1f} % "
                  "saved).", ""]
    if not t["stages"]:
        return lines + [f"**{how} not applied:** {t['warning']}.", ""]
    lines += [f"{how}; FLOPs per image {t['flops'] / 1e6:.1f} M -> {t['flops_reduced'] / 1e6:.1f} M "
              f"({100 * t['flops_ratio']:.0f} %). Token counts are fixed in the exported graph.", "",
              "| stage | tokens entering each block | unmerged at the end |", "|---|---|---|"]
    records = {r["stage"]: r for r in t["stages"]}
    for name, counts in t["tokens_per_block"].items():
        r = records.get(name, {})
        if r.get("inside_attention"):  # EfficientFormerV2: the blocks see the whole map
            lines.append(f"| `{name}` | attention over {', '.join(map(str, counts))} (merged inside each attention) "
                         "| after each attention |")
        else:
            lines.append(f"| `{name}` | {' -> '.join(map(str, counts))} | {'yes' if r.get('unmerge') else 'no'} |")
    if t.get("warning"):
        lines += ["", f"**Warning:** {t['warning']}."]
    return lines + [""]


def budget_lines(checks: list[dict]) -> list[str]:
    """The accuracy budget: each deployed artifact, what the run spent of it and which stage spent what."""
    rows = [c for c in checks if c.get("kind") == "budget"]
    if not rows:
        return []
    lines = ["## Accuracy budget", "", "| artifact | within | spent, by stage |", "|---|---|---|"]
    lines += [f"| {c['name'].split(':')[0]} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in rows]
    return lines + [""]
