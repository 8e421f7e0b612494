"""``lorakit train --task text-to-image | unconditional`` on tiny SD-shaped models: the trained
U-Net LoRA lowers the fixed-noise denoising loss on its images, loads in diffusers' pipeline,
and bad input stops with one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.cli import main
from lorakit.diffusion import load_lora_weights
from lorakit.diffusion.objective import denoising_losses, prior_preservation_loss

pytest.importorskip("diffusers", reason="pip install 'lorakit[diffusion]' (diffusers)")

from lorakit.diffusion import tiny  # noqa: E402
from lorakit.diffusion.train import load_pipeline, read_image_folder  # noqa: E402


from tests.test_train_fixtures import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)


def _images(folder, n, size, seed, captions=False):
    from PIL import Image

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(size, size, 3, generator=g) * 255)
    for i in range(n):  # one "subject": the same picture with a little noise
        img = (base + torch.randn(size, size, 3, generator=g) * 8).clamp(0, 255).to(torch.uint8)
        Image.fromarray(img.numpy()).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a photo of sks thing {i}")
    return folder


def _fixed_loss(pipe, scheduler, x0, ctx=None):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        if ctx is None:
            return denoising_losses(lambda x, t: pipe.unet(x, t).sample, scheduler, x0.repeat(8, 1, 1, 1), g).mean()
        ctx = ctx.expand(8 * len(x0), -1, -1)
        return denoising_losses(lambda x, t: pipe.unet(x, t, encoder_hidden_states=ctx).sample,
                                scheduler, x0.repeat(8, 1, 1, 1), g).mean()


def test_prior_preservation_loss_weights_the_class_rows():
    losses = torch.tensor([1.0, 3.0, 10.0, 20.0])
    prior = torch.tensor([False, False, True, True])
    assert prior_preservation_loss(losses, prior, 0.5).item() == pytest.approx(2.0 + 0.5 * 15.0)
    assert prior_preservation_loss(losses, torch.zeros(4, dtype=torch.bool), 0.5).item() == pytest.approx(8.5)


def test_text_to_image_dreambooth_lora_lowers_the_loss_and_loads_in_diffusers(tmp_path):
    data = _images(tmp_path / "inst", 4, 8, 0)
    cls = _images(tmp_path / "cls", 4, 8, 1)
    out = tmp_path / "run"
    rc = main(["train", "--task", "text-to-image", "--model", "tiny-sd", "--data", str(data),
               "--instance-prompt", "a photo of sks thing", "--class-data", str(cls),
               "--class-prompt", "a photo of a thing", "--prior-loss-weight", "0.5",
               "--max-steps", "60", "--batch-size", "4", "--lr", "1e-2", "--r", "4",
               "--lora-alpha", "4", "--target-modules", "[to_q, to_k, to_v, to_out.0, proj_in, proj_out, conv1, conv2]",
               "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 60
    pipe, scheduler = load_pipeline("text-to-image", "tiny-sd", tmp_path / "fresh")
    images, _ = read_image_folder(data, 8, 3)
    x0 = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer("a photo of sks thing", padding="max_length", max_length=16, return_tensors="pt")
    ctx = pipe.text_encoder(ids.input_ids)[0].detach()
    before = _fixed_loss(pipe, scheduler, x0, ctx)
    pipe.load_lora_weights(str(out), adapter_name="sks")  # diffusers reads what lorakit trained
    after = _fixed_loss(pipe, scheduler, x0, ctx)
    assert after < 0.9 * before, (before, after)
    ours = tiny.unet()
    load_lora_weights(out / "lora_kohya.safetensors", {"unet": ours})
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 50])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, encoder_hidden_states=ctx.expand(2, -1, -1)).sample,
                                   pipe.unet(x, t, encoder_hidden_states=ctx.expand(2, -1, -1)).sample,
                                   rtol=1e-5, atol=1e-5)


def test_unconditional_lora_lowers_the_loss(tmp_path):
    data = _images(tmp_path / "inst", 4, 16, 2)
    out = tmp_path / "run"
    assert main(["train", "--task", "unconditional", "--model", "tiny-ddpm", "--data", str(data),
                 "--max-steps", "40", "--batch-size", "4", "--lr", "5e-3", "--r", "4",
                 "--target-modules", "[to_q, to_k, to_v, to_out.0, conv1, conv2]",
                 "--output-dir", str(out), "--no-progress"]) == 0
    pipe, scheduler = load_pipeline("unconditional", "tiny-ddpm", tmp_path)
    x0, _ = read_image_folder(data, 16, 3)
    before = _fixed_loss(pipe, scheduler, x0)
    load_lora_weights(out, {"unet": pipe.unet})
    assert _fixed_loss(pipe, scheduler, x0) < 0.9 * before


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    data = _images(tmp_path / "inst", 2, 8, 0)
    args = ["train", "--task", "text-to-image", "--model", "tiny-sd", "--data", str(data),
            "--max-steps", "1", "--output-dir", str(tmp_path / "r")]
    assert main(args) == 2
    assert "need --instance-prompt" in capsys.readouterr().err
    (data / "broken.png").write_text("not a png")
    assert main(args + ["--instance-prompt", "x"]) == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err
    assert main(["train", "--task", "unconditional", "--model", "nowhere", "--data", str(data)]) == 2
    assert "local diffusers pipeline directory" in capsys.readouterr().err


def test_prior_preservation_loss_with_one_part_missing():
    losses = torch.tensor([4.0, 6.0])
    assert prior_preservation_loss(losses, torch.tensor([True, True]), 0.5).item() == pytest.approx(2.5)
