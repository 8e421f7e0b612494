"""``lorakit train --task text_to_image | unconditional``: LoRA on a diffusers U-Net from a
folder of images (DreamBooth-LoRA style), noise-prediction loss with diffusers' DDPM scheduler.

    data/            a folder of images (png, jpg, webp, bmp); ``name.txt`` beside ``name.png``
                     is its caption, else ``instance_prompt`` (text-to-image)
    class_data/      optional class images for prior preservation, prompt ``class_prompt``,
                     loss weight ``prior_loss_weight``
    model            a local diffusers pipeline directory (StableDiffusionPipeline-like for
                     text-to-image: unet, text_encoder, tokenizer, scheduler, optional vae;
                     DDPMPipeline-like for unconditional), or ``tiny-sd`` / ``tiny-ddpm``:
                     SD-shaped models built from configs with random weights (no download)

Only the U-Net's adapter trains (text encoder and VAE frozen), in fp32. Writes
``pytorch_lora_weights.safetensors`` (diffusers; ``pipe.load_lora_weights`` reads it),
``lora_kohya.safetensors`` (A1111 / ComfyUI), ``config.yaml`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import lorakit
from lorakit.diffusion.files import save_lora_weights
from lorakit.diffusion.objective import denoising_losses, prior_preservation_loss
from lorakit.train.optim import lr_factor, param_groups, set_lr

TASKS = ("text_to_image", "unconditional")  # lorakit.train.tasks spelling
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_folder(folder: str | Path, size: int, channels: int):
    """Images as ``[N, C, size, size]`` in [-1, 1] (center crop, bicubic resize) and their
    captions (``None`` without a ``.txt``). Unreadable files are named."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images, captions = [], []
    for path in files:
        try:
            img = Image.open(path).convert("L" if channels == 1 else "RGB")
        except Exception as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float()
        images.append(t.view(size, size, channels).permute(2, 0, 1) / 127.5 - 1.0)
        caption = path.with_suffix(".txt")
        captions.append(caption.read_text().strip() if caption.exists() else None)
    return torch.stack(images), captions


def load_pipeline(task: str, model: str, workdir: Path):
    """The diffusers pipeline (or a tiny one built from configs) and its training scheduler."""
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel

    from lorakit.diffusion import tiny
    from lorakit.train.tasks import canonical_task

    task = canonical_task(task)
    if model == "tiny-sd" and task == "text_to_image":
        pipe = tiny.pipeline(workdir / "tiny_vocab")
    elif model == "tiny-ddpm" and task == "unconditional":
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(16, 32), norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        pipe = SimpleNamespace(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    else:
        if not Path(model).is_dir():
            raise FileNotFoundError(f"model {model!r}: give a local diffusers pipeline directory, or "
                                    f"{'tiny-sd' if task == 'text_to_image' else 'tiny-ddpm'}")
        pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    needed = ("unet", "scheduler") + (("text_encoder", "tokenizer") if task == "text_to_image" else ())
    missing = [n for n in needed if getattr(pipe, n, None) is None]
    if missing:
        raise ValueError(f"model {model!r} has no {missing} for task {task!r}")
    return pipe, DDPMScheduler.from_config(pipe.scheduler.config)


def _encoder(pipe):
    """prompt -> frozen text-encoder hidden states ``[1, L, D]`` (cached per prompt)."""
    cache: dict[str, torch.Tensor] = {}

    def encode(prompt: str) -> torch.Tensor:
        if prompt not in cache:
            tok = pipe.tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
            with torch.no_grad():
                cache[prompt] = pipe.text_encoder(tok.input_ids)[0]
        return cache[prompt]
    return encode


def _to_model_space(pipe, images: torch.Tensor) -> torch.Tensor:
    """Pixels -> what the U-Net denoises: VAE latents (times its scaling factor) or pixels."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return images
    with torch.no_grad():
        return vae.encode(images).latent_dist.sample() * vae.config.scaling_factor


def train_diffusion(cfg) -> Path:
    """Run one diffusion LoRA training from a ``TrainConfig`` (task text_to_image or
    unconditional); returns the diffusers LoRA file."""
    from lorakit.train import config_io

    out = Path(cfg.output_dir)
    if (out / "pytorch_lora_weights.safetensors").exists() and not cfg.overwrite:
        raise ValueError(f"{out} already holds a run; pass --overwrite or another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    # ---- models ----
    pipe, scheduler = load_pipeline(cfg.task, cfg.model, out)
    unet = pipe.unet
    for part in ("unet", "text_encoder", "vae"):
        if getattr(pipe, part, None) is not None:
            getattr(pipe, part).requires_grad_(False).eval()
    lorakit.add_adapter(unet, cfg.lora)
    unet.train()
    # ---- data ----
    vae = getattr(pipe, "vae", None)
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    size = cfg.resolution or unet.config.sample_size * scale
    channels = vae.config.in_channels if vae is not None else unet.config.in_channels
    images, captions = read_image_folder(cfg.data, size, channels)
    n_instance = len(images)
    is_prior = torch.zeros(n_instance, dtype=torch.bool)
    if cfg.class_data:
        class_images, _ = read_image_folder(cfg.class_data, size, channels)
        images = torch.cat([images, class_images])
        captions += [cfg.class_prompt] * len(class_images)
        is_prior = torch.cat([is_prior, torch.ones(len(class_images), dtype=torch.bool)])
    if cfg.task == "text_to_image":
        captions = [c if c is not None else cfg.instance_prompt for c in captions]
        if not all(captions):
            raise ValueError(f"{cfg.data}: images without a .txt caption need --instance-prompt"
                             + (" (and class images need --class-prompt)" if cfg.class_data else ""))
        encode = _encoder(pipe)
    latents = _to_model_space(pipe, images)
    # ---- optimisation ----
    steps = cfg.max_steps or cfg.epochs * math.ceil(n_instance / cfg.batch_size)
    warmup = int(cfg.warmup_ratio * steps)
    optimizer = torch.optim.AdamW(param_groups(unet, cfg.lr, cfg.weight_decay), lr=cfg.lr)
    print(f"lorakit train: {cfg.model} ({cfg.task}), {len(images)} images "
          f"({int(is_prior.sum())} class), {steps} steps, batch {cfg.batch_size}")
    t0, log = time.time(), (out / "metrics.jsonl").open("w")
    for step in range(steps):
        # batch_size instance images, plus as many class images with prior preservation
        idx = torch.randint(0, n_instance, (cfg.batch_size,), generator=gen)
        if n_instance < len(images):
            idx = torch.cat([idx, torch.randint(n_instance, len(images), (cfg.batch_size,), generator=gen)])
        if cfg.task == "text_to_image":
            ctx = torch.cat([encode(captions[i]) for i in idx.tolist()])
            predict = lambda x, t: unet(x, t, encoder_hidden_states=ctx).sample  # noqa: E731
        else:
            predict = lambda x, t: unet(x, t).sample  # noqa: E731
        losses = denoising_losses(predict, scheduler, latents[idx], gen)
        loss = prior_preservation_loss(losses, is_prior[idx], cfg.prior_loss_weight)
        if not torch.isfinite(loss):
            raise ValueError(f"training diverged at step {step + 1}: loss {loss.item()}")
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in unet.parameters() if p.requires_grad], cfg.max_grad_norm)
        lr = set_lr(optimizer, lr_factor(step, steps, warmup, cfg.lr_scheduler))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "lr": lr,
                                  "elapsed_s": round(time.time() - t0, 3)}) + "\n")
    log.close()
    # ---- output ----
    unet.eval()
    (out / "config.yaml").write_text(config_io.to_yaml(cfg))
    components = {"unet": unet}
    path = save_lora_weights(out, components, format="diffusers")
    save_lora_weights(out / "lora_kohya.safetensors", components, format="kohya")
    print(f"lorakit train: done in {time.time() - t0:.1f} s, final loss {loss.item():.4f}; "
          f"LoRA in {path} and {out / 'lora_kohya.safetensors'}")
    return path


__all__ = ["TASKS", "load_pipeline", "read_image_folder", "train_diffusion"]
