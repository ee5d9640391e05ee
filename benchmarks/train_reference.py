"""Train the built-in reference models on CIFAR-10, on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/train_reference.py --model hybrid-cifar10 --epochs 15 --seed 0
    python benchmarks/train_reference.py --model timm:levit_128s --input-size 64 --epochs 5 --threads 2
    OMP_NUM_THREADS=1 python benchmarks/train_reference.py --model hf-vit-cifar10 --epochs 2 --lr 1e-4
    OMP_NUM_THREADS=1 python benchmarks/train_reference.py --model hybrid-cifar10 --init shipped --epochs 12 \
        --lr 5e-4 --clip-grad 1.0 --out /tmp/hybrid-more

``--init`` starts from a safetensors state dict (``shipped``: the built-in's weights in the repository) and
trains a new warm-up + cosine cycle on it; the card records the starting point and the epochs before it.

``hf-vit-cifar10`` is a Hugging Face ``transformers`` ViTForImageClassification of the built-in ViT's shape,
started from the built-in ViT's trained weights (checked to give the same logits) and fine-tuned through
the transformers model's own forward; it is written with ``save_pretrained`` (plus
``preprocessor_config.json``) to ``--out``/hf-vit-cifar10, the folder ``edgevit compress --model hf:...``
reads.

A ``timm:NAME`` model is built with ``img_size=--input-size`` and 10 classes, normalized as the built-ins
(CIFAR-10 mean/std), and written to ``--out`` (default ~/.cache/edgevit/checkpoints: checkpoints of timm
models do not go into the repository); edgevit loads it with ``model: {source: timm:NAME, input_size:
SIZE, checkpoint: PATH, mean: [...], std: [...]}`` (the card lists the values).

Reads CIFAR-10 as JPEG files in ImageFolder layout (default: ~/.cache/edgevit/cifar10-images, unpacked
from ../shared/data/cifar10/cifar10-jpg.tar.gz). Writes
``edgevit/models/weights/<model>.safetensors`` and a JSON model card (accuracy, command, seed).
Recipe: AdamW, 1 warm-up epoch then cosine, label smoothing 0.1, random crop (pad 4) + flip.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgevit.models.builtin import BUILTINS, WEIGHTS_DIR, BuiltinSpec  # noqa: E402

DEFAULT_DATA = Path.home() / ".cache" / "edgevit" / "cifar10-images"


def load_split(root: Path, split: str, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as uint8 NHWC plus int64 labels, cached as .npz beside the folder."""
    cache = root.parent / f"cifar10-{split}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["x"], z["y"]
    xs, ys = [], []
    for idx, label in enumerate(labels):
        for path in sorted((root / split / label).iterdir()):
            with Image.open(path) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(idx)
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    np.savez(cache, x=x, y=y)
    return x, y


def to_tensor(x: np.ndarray, mean, std) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (t - m) / s


def resize_all(x: np.ndarray, size: int) -> np.ndarray:
    """Upsample a uint8 NHWC set with PIL bilinear, the resampling edgevit's preprocessing uses at run time."""
    if x.shape[1] == size:
        return x
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in x])


def augment(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop with zero padding + horizontal flip, on a uint8 NHWC batch."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(x)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.random(n) < 0.5
    for i in range(n):
        crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


@torch.no_grad()
def evaluate(model, x, y, mean, std, batch=500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(to_tensor(x[i:i + batch], mean, std))
        correct += int((logits.argmax(1) == torch.from_numpy(y[i:i + batch])).sum())
    return correct / len(x)


CHECKPOINTS = Path.home() / ".cache" / "edgevit" / "checkpoints"


def timm_spec(source: str, size: int) -> BuiltinSpec:
    """A timm architecture at ``size`` px with 10 classes, described like a built-in."""
    import timm

    name = source.removeprefix("timm:")
    return BuiltinSpec(name=f"{name}-cifar10-{size}", arch=name, input_size=size, description="",
                       build=lambda: timm.create_model(name, pretrained=False, num_classes=10, img_size=size))


class HFLogits(torch.nn.Module):
    """A transformers classifier as pixels -> logits (the form the loop trains)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(pixel_values=x).logits


@torch.no_grad()
def hf_vit_from_builtin() -> torch.nn.Module:
    """transformers ViT with the built-in ViT's trained weights (timm's fused qkv split into q, k, v)."""
    import transformers

    from edgevit.models import load_model
    from edgevit.recipe import ModelConfig

    timm_vit, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    cfg = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=6,
                                 num_attention_heads=4, intermediate_size=384, layer_norm_eps=1e-6, qkv_bias=True,
                                 num_labels=10, id2label=dict(enumerate(info.labels)),
                                 label2id={n: i for i, n in enumerate(info.labels)})
    hf = transformers.ViTForImageClassification(cfg).eval()
    body, pairs = hf.vit, []
    pairs += [(body.embeddings.patch_embeddings.projection, timm_vit.patch_embed.proj), (body.layernorm, timm_vit.norm),
              (hf.classifier, timm_vit.head)]
    for layer, blk in zip(body.layers, timm_vit.blocks):
        pairs += [(layer.layernorm_before, blk.norm1), (layer.layernorm_after, blk.norm2),
                  (layer.attention.o_proj, blk.attn.proj), (layer.mlp.fc1, blk.mlp.fc1), (layer.mlp.fc2, blk.mlp.fc2)]
        for part, w, b in zip(("q_proj", "k_proj", "v_proj"), blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)):
            getattr(layer.attention, part).weight.copy_(w)
            getattr(layer.attention, part).bias.copy_(b)
    for dst, src in pairs:
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    body.embeddings.cls_token.copy_(timm_vit.cls_token)
    body.embeddings.position_embeddings.copy_(timm_vit.pos_embed)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(hf(pixel_values=x).logits, timm_vit(x), atol=1e-4), "the copy changed the logits"
    return HFLogits(hf)


def save_hf(model: HFLogits, folder: Path, spec: BuiltinSpec) -> None:
    """save_pretrained plus the processor config that states the built-ins' preprocessing."""
    import transformers

    tmp = folder.with_name(f".{folder.name}.tmp")
    model.hf.save_pretrained(tmp)
    transformers.ViTImageProcessor(size={"height": spec.input_size, "width": spec.input_size}, do_normalize=True,
                                   image_mean=list(spec.mean), image_std=list(spec.std)).save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def start_from(model: torch.nn.Module, spec: BuiltinSpec, init: str) -> dict:
    """Load the starting weights into ``model``; returns what the card says of them."""
    from safetensors.torch import load_file

    path = spec.weights_path if init == "shipped" else Path(init)
    model.load_state_dict(load_file(str(path)))
    prior = {"weights": str(path.name), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    card = path.with_suffix(".json")
    if card.is_file():
        old = json.loads(card.read_text())
        prior.update(test_top1=old.get("test_top1"), epochs=old.get("total_epochs", old.get("epochs", 0)),
                     command=old.get("command"))
    return prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"one of {sorted(BUILTINS)}, timm:NAME or hf-vit-cifar10")
    p.add_argument("--input-size", type=int, default=64, help="timm models: image side (img_size)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="default: edgevit/models/weights (built-ins), "
                   "~/.cache/edgevit/checkpoints (timm)")
    p.add_argument("--log", type=Path, default=Path(__file__).parent / "logs")
    p.add_argument("--init", default=None, help="continue from a safetensors state dict ('shipped': the built-in's "
                   "weights in edgevit/models/weights)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    hf = args.model == "hf-vit-cifar10"
    spec = timm_spec(args.model, args.input_size) if args.model.startswith("timm:") else \
        BuiltinSpec(name=args.model, arch="transformers ViT (the built-in ViT's shape)", build=hf_vit_from_builtin,
                    description="") if hf else BUILTINS[args.model]
    args.out = args.out or (CHECKPOINTS if args.model.startswith("timm:") or hf else WEIGHTS_DIR)
    labels = list(spec.labels)
    x_train, y_train = load_split(args.data, "train", labels)
    x_test, y_test = load_split(args.data, "test", labels)
    # Models wider than the 32 px CIFAR images see them upsampled, as at run time; the crop padding
    # scales with them so that the augmentation is the same shift in the original pixels.
    x_train, x_test = resize_all(x_train, spec.input_size), resize_all(x_test, spec.input_size)
    pad = 4 * spec.input_size // 32

    model = spec.build()
    prior = start_from(model, spec, args.init) if args.init else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps_per_epoch = len(x_train) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    args.log.mkdir(parents=True, exist_ok=True)
    log_path = args.log / f"train-{args.model}.jsonl"
    log = log_path.open("a")
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            xb = to_tensor(augment(x_train[idx], rng, pad), spec.mean, spec.std)
            yb = torch.from_numpy(y_train[idx])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        acc = evaluate(model, x_test[::5], y_test[::5], spec.mean, spec.std)
        rec = {"epoch": epoch + 1, "loss": running / seen, "test_top1_2k": acc,
               "minutes": (time.time() - t0) / 60}
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        torch.save(model.state_dict(), args.log / f"{args.model}-last.pt")

    top1 = evaluate(model, x_test, y_test, spec.mean, spec.std)
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    if hf:
        save_hf(model, args.out / spec.name, spec)
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        tmp = args.out / f".{spec.name}.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, spec.weights_path if args.out == WEIGHTS_DIR else args.out / spec.weights_path.name)
    card = {
        "name": spec.name, "arch": spec.arch, "dataset": "CIFAR-10 (JPEG)",
        "test_top1": top1, "test_images": int(len(x_test)), "epochs": args.epochs,
        "batch": args.batch, "lr": args.lr, "weight_decay": args.wd, "clip_grad": args.clip_grad, "seed": args.seed,
        "threads": args.threads, "train_minutes": round((time.time() - t0) / 60, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "labels": labels, "mean": list(spec.mean), "std": list(spec.std), "input_size": spec.input_size,
        "command": "OMP_NUM_THREADS=1 python benchmarks/train_reference.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
    }
    if prior:
        card["init"] = prior
        card["total_epochs"] = prior.get("epochs", 0) + args.epochs
    card_out = args.out / spec.name / "edgevit_card.json" if hf else args.out / spec.card_path.name
    card_out.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"final_test_top1": top1}), flush=True)


if __name__ == "__main__":
    main()
