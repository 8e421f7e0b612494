"""Diffusion LoRA demo, offline: a class-conditional DDPM on scikit-learn's 8x8 digits, two
style LoRAs trained on 40 images each, and what their weights do to the samples.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/diffusion_demo.py

1. Pre-train (once; cached in ~/.cache/lorakit/diffusion_digits) a class-conditional diffusers
   ``UNet2DModel`` on the plain digits of the training split (noise prediction, DDPM).
2. Two styles the base never saw: ``thick`` (strokes dilated by one pixel) and ``flip``
   (mirrored left-right). One LoRA each, trained on 40 training digits (4 per class) in that
   style, with ``lorakit.add_adapter`` and the same denoising loss.
3. A style classifier (plain / thick / flip / thick+flip; scikit-learn SVC on the 64 pixels)
   and a digit classifier (all four styles) trained on the training split, checked on the
   held-out split, label 200 samples (20 per digit, fixed noise, DDIM 40 steps) per setting:
   the base, each LoRA at weights -1..1.5 (``lorakit.set_adapter(..., weights=)``, no
   merge), the two mixed, and a merged adapter (``lorakit.merge(..., weights=)``) against
   the run-time one. Sample grids per weight go to docs/img/, numbers to
   bench/results/diffusion_demo.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lorakit
from lorakit.diffusion import load_lora_weights, save_lora_weights
from lorakit.diffusion.objective import denoising_losses
from lorakit.diffusion.targets import ATTENTION

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "lorakit" / "diffusion_digits"
STYLES = ["plain", "thick", "flip", "thick+flip"]


# ---- data and styles ---------------------------------------------------------------------
def digits():
    """(train images, train labels, test images, test labels); images [N, 1, 8, 8] in [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(d.target)
    tr, te = train_test_split(range(len(y)), test_size=0.25, random_state=0, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def thick(x):
    """Grey dilation by one pixel (max over each pixel and its right/lower neighbours)."""
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-1.0), 2, stride=1)


def flip(x):
    return torch.flip(x, dims=[-1])


STYLE_FNS = {"plain": lambda x: x, "thick": thick, "flip": flip, "thick+flip": lambda x: flip(thick(x))}


def few_shot(x, y, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:per_class]]
                     for c in range(10)])
    return x[idx], y[idx]


# ---- model, training, sampling -----------------------------------------------------------
UNET = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
            block_out_channels=[16, 32], norm_num_groups=8, num_class_embeds=10,
            down_block_types=["DownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "UpBlock2D"])


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET)


def fit(unet, scheduler, x, y, steps, batch, lr, seed):
    """AdamW on the trainable parameters, cosine decay; returns the losses of the last 50 steps."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    unet.train()
    tail = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        labels = y[idx]
        loss = denoising_losses(lambda xt, t: unet(xt, t, class_labels=labels).sample, scheduler, x[idx], g).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tail = (tail + [loss.item()])[-50:]
    unet.eval()
    return sum(tail) / len(tail)


def base_model(scheduler, x, y, steps):
    """The pre-trained base U-Net, from the cache when its settings match."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha1(json.dumps({"steps": steps, "v": 1, "unet": UNET}, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE / f"unet-{key}.safetensors"
    torch.manual_seed(0)
    unet = make_unet()
    if path.exists():
        unet.load_state_dict(load_file(str(path)))
        return unet.eval(), {"cached": True, "file": str(path)}
    t0 = time.time()
    loss = fit(unet, scheduler, x, y, steps, batch=64, lr=2e-3, seed=0)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return unet.eval(), {"cached": False, "file": str(path), "steps": steps,
                         "seconds": round(time.time() - t0, 1), "final_loss": round(loss, 4)}


@torch.no_grad()
def sample(unet, labels, seed, steps=40):
    """DDIM (eta 0) from fixed noise: images [N, 1, 8, 8] in [-1, 1]."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    ddim.set_timesteps(steps)
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        x = ddim.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample
    return x.clamp(-1, 1)


# ---- measuring ---------------------------------------------------------------------------
def classifiers(x_tr, y_tr, x_te, y_te):
    """Style (4 classes) and digit SVCs on all four styles of the split; held-out accuracy."""
    from sklearn.svm import SVC

    def views(x, y):
        xs = torch.cat([STYLE_FNS[s](x) for s in STYLES]).flatten(1).numpy()
        return xs, torch.arange(4).repeat_interleave(len(x)).numpy(), y.repeat(4).numpy()

    a, s_tr, d_tr = views(x_tr, y_tr)
    b, s_te, d_te = views(x_te, y_te)
    style, digit = SVC(C=10, gamma="scale").fit(a, s_tr), SVC(C=10, gamma="scale").fit(a, d_tr)
    return style, digit, {"style_accuracy": float((style.predict(b) == s_te).mean()),
                          "digit_accuracy": float((digit.predict(b) == d_te).mean()),
                          "held_out_images": int(len(x_te))}


def measure(images, labels, style, digit):
    flat = images.flatten(1).numpy()
    s = style.predict(flat)
    frac = {name: float((s == i).mean()) for i, name in enumerate(STYLES)}
    return {"fraction": frac, "thick": frac["thick"] + frac["thick+flip"],
            "flip": frac["flip"] + frac["thick+flip"],
            "digit_accuracy": float((digit.predict(flat) == labels.numpy()).mean()),
            "ink": float(((images + 1) * 8).mean())}  # mean pixel value on the 0..16 scale


def grid_png(images, path: Path, cols=8, zoom=4):
    """Rows = digits 0..9 (``cols`` samples each), a grey 1-pixel gap around each sample,
    every pixel ``zoom`` x ``zoom``."""
    from PIL import Image

    x = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0]
    x = F.pad(x, (1, 1, 1, 1), value=96)
    x = x.view(10, cols, 10, 10).permute(0, 2, 1, 3).reshape(100, cols * 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(x.numpy()).resize((cols * 10 * zoom, 100 * zoom), Image.NEAREST).save(path)


# ---- the run -----------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--samples-per-digit", type=int, default=20)
    ap.add_argument("--pretrain-only", action="store_true",
                    help="only build the cached base model (no measurement; may run outside the bench lock)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny model: 1 is fastest)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/diffusion_demo.json"))
    ap.add_argument("--img-dir", default=str(ROOT / "docs/img"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import DDPMScheduler

    t_start = time.time()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x_tr, y_tr, x_te, y_te = digits()
    unet, pretrain = base_model(scheduler, x_tr, y_tr, args.pretrain_steps)
    print(f"base model: {pretrain}")
    if args.pretrain_only:
        return
    style, digit, clf = classifiers(x_tr, y_tr, x_te, y_te)
    print(f"classifiers on {clf['held_out_images']} held-out images x 4 styles: style "
          f"{clf['style_accuracy']:.3f}, digit {clf['digit_accuracy']:.3f}")

    # ---- two style LoRAs, 40 images each ----
    # UNet2DModel's attention blocks have no proj_in/proj_out: attention + resnet layers
    cfg = lorakit.LoraConfig(r=4, lora_alpha=4, target_modules=ATTENTION + ["conv1", "conv2", "conv_shortcut",
                                                                           "time_emb_proj"])
    lora_train = {}
    for i, name in enumerate(["thick", "flip"]):
        xs, ys = few_shot(x_tr, y_tr, 4, seed=10 + i)
        lorakit.add_adapter(unet, cfg, name=name)
        lorakit.set_adapter(unet, name)
        t0 = time.time()
        loss = fit(unet, scheduler, STYLE_FNS[name](xs), ys, args.lora_steps, batch=40, lr=3e-3, seed=1 + i)
        lora_train[name] = {"images": len(xs), "steps": args.lora_steps, "seconds": round(time.time() - t0, 1),
                            "final_loss": round(loss, 4)}
        print(f"LoRA {name}: {len(xs)} images, {args.lora_steps} steps, {lora_train[name]['seconds']} s")
    trainable = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n and ".thick" in n)
    base_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n)

    # ---- sampling at weights ----
    labels = torch.arange(10).repeat_interleave(args.samples_per_digit)
    grid_idx = torch.cat([torch.arange(8) + d * args.samples_per_digit for d in range(10)])
    img_dir = Path(args.img_dir)
    settings = [("base", [], [])]
    settings += [(f"thick@{w:g}", ["thick"], [w]) for w in (-1.0, -0.5, 0.25, 0.5, 0.75, 1.0, 1.5)]
    settings += [(f"flip@{w:g}", ["flip"], [w]) for w in (0.5, 1.0)]
    settings += [(f"thick@{a:g}+flip@{b:g}", ["thick", "flip"], [a, b])
                 for a, b in ((1.0, 1.0), (0.7, 0.3), (0.3, 0.7), (0.5, 0.5))]
    rows, kept = {}, {}
    for label, names, weights in settings:
        if names:
            lorakit.set_adapter(unet, names, weights=weights)
            imgs = sample(unet, labels, seed=7)
        else:
            with lorakit.disabled(unet):
                imgs = sample(unet, labels, seed=7)
        rows[label] = measure(imgs, labels, style, digit)
        kept[label] = imgs
        png = img_dir / f"diffusion_{label.replace('@', '_w').replace('+', '_')}.png"
        grid_png(imgs[grid_idx], png)
        rows[label]["grid"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
        r = rows[label]
        print(f"{label:>22}: thick {r['thick']:.2f}  flip {r['flip']:.2f}  plain {r['fraction']['plain']:.2f}  "
              f"digit acc {r['digit_accuracy']:.2f}  ink {r['ink']:.2f}")

    # ---- merged == run time; unmerge restores ----
    before = {k: v.clone() for k, v in unet.state_dict().items() if "base_layer" in k}
    lorakit.set_adapter(unet, ["thick", "flip"])
    lorakit.merge(unet, ["thick", "flip"], weights=[0.5, 0.5])
    merged = sample(unet, labels, seed=7)
    lorakit.unmerge(unet)
    restored = max((unet.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    merge_check = {"max_abs_sample_diff_merged_vs_runtime": (merged - kept["thick@0.5+flip@0.5"]).abs().max().item(),
                   "max_abs_weight_diff_after_unmerge": restored,
                   "merged": measure(merged, labels, style, digit)}

    # ---- files ----
    files = {}
    work = CACHE / "adapters"
    for name in ("thick", "flip"):
        d = save_lora_weights(work / name, {"unet": unet}, name=name, format="diffusers")
        k = save_lora_weights(work / f"{name}_kohya.safetensors", {"unet": unet}, name=name, format="kohya")
        fresh = make_unet()
        fresh.load_state_dict(_base_state(unet))
        load_lora_weights(k, {"unet": fresh}, name=name)
        lorakit.set_adapter(unet, name)
        x, t, c = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 500, 900]), torch.tensor([1, 3, 5, 7])
        with torch.no_grad():
            diff = (fresh(x, t, class_labels=c).sample - unet(x, t, class_labels=c).sample).abs().max().item()
        files[name] = {"diffusers_bytes": d.stat().st_size, "kohya_bytes": k.stat().st_size,
                       "kohya_reloaded_max_abs_diff": diff}
    base_bytes = sum(v.numel() * v.element_size() for v in _base_state(unet).values())

    result = {
        "machine": common.machine_info(note="measured while the machine was shared with other jobs: "
                                             "absolute times pessimistic; fractions do not depend on load"),
        "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/diffusion_demo.py",
        "pretrain": pretrain, "classifiers": clf, "lora": {"config": {"r": 4, "lora_alpha": 4,
                                                                      "target_modules": cfg.target_modules},
                                                           "train": lora_train,
                                                           "params_per_adapter": trainable,
                                                           "base_params": base_params},
        "samples_per_setting": len(labels), "settings": rows, "merge": merge_check,
        "files": files, "base_model_bytes_fp32": base_bytes,
        "total_seconds": round(time.time() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"merged vs run-time samples: max abs diff {merge_check['max_abs_sample_diff_merged_vs_runtime']:.2e}; "
          f"unmerge restores weights to {restored:.1e}")
    print(f"adapter files: " + ", ".join(f"{n} {f['diffusers_bytes'] / 1024:.0f} KiB diffusers / "
                                         f"{f['kohya_bytes'] / 1024:.0f} KiB kohya" for n, f in files.items())
          + f"; base U-Net {base_bytes / 1024:.0f} KiB fp32")
    print(f"total {result['total_seconds']} s on {common.machine_line()} -> {args.out}")


def _base_state(unet):
    """The base U-Net's own weights (LoRA layers' ``base_layer.`` prefix removed)."""
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


if __name__ == "__main__":
    main()
