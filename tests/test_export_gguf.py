"""GGUF exports read back by llama.cpp (node-llama-cpp) and by transformers' GGUF loader, on a
tiny Llama with SmolLM2's vocabulary: LoRA files (plain, rsLoRA, rank/alpha patterns) equal
lorakit's forward, merged models equal the merged Hugging Face model within the dtype's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorakit.export import export, load_source
from lorakit.export.lora import fold_factor
from lorakit.export.source import embedded_gguf
from lorakit.formats.gguf import read_gguf_tensor
from tests.export_support import (ADAPTER_KINDS, llama_logits, make_adapter, max_diff,
                                  require_llama, tiny_llama_dir, torch_logits)

PROMPTS = [[1, 4093, 198, 1780, 314, 260, 3575, 282], [1, 4093, 198, 12, 800, 314, 2],
           list(range(100, 108))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny base dir, its f32 GGUF for llama.cpp, {kind: adapter dir})."""
    root = tmp_path_factory.mktemp("export")
    base = tiny_llama_dir(root / "base")
    src = load_source(None, base=str(base), base_gguf=embedded_gguf("smollm2-135m-instruct"))
    export(src, "gguf", root / "base-f32.gguf", outtype="f32", check_prompts=0)
    adapters = {kind: make_adapter(str(base), root / kind, kind) for kind in ADAPTER_KINDS}
    return base, root / "base-f32.gguf", adapters


def _adapter_src(tiny, kind):
    base, _, adapters = tiny
    return load_source(adapters[kind], base=str(base), base_gguf=embedded_gguf("smollm2-135m-instruct"))


def _rel_rms(ours, theirs) -> float:
    """RMS of the difference over the RMS spread of our logits (0 = equal)."""
    num = np.sqrt(np.mean(np.concatenate([(a - b).ravel() ** 2 for a, b in zip(ours, theirs)])))
    return float(num / np.concatenate([a.ravel() for a in ours]).std())


def test_fold_factor_makes_llama_scaling_equal_lorakit():
    # llama.cpp: alpha / rank. plain: 16/8 -> factor 1; rsLoRA 16/sqrt(8) -> sqrt(8); a
    # rank_pattern layer with r=4 and the file alpha 16: 16/4 -> 1; alpha_pattern 40 at r=8: 2.5.
    assert fold_factor(16 / 8, 8, 16) == 1.0
    assert fold_factor(16 / 8 ** 0.5, 8, 16) * 16 / 8 == pytest.approx(16 / 8 ** 0.5)
    assert fold_factor(16 / 4, 4, 16) == 1.0
    assert fold_factor(40 / 8, 8, 16) == pytest.approx(2.5)


@pytest.mark.parametrize("kind", sorted(ADAPTER_KINDS))
def test_lora_gguf_in_llama_equals_lorakit(tiny, tmp_path, kind):
    require_llama()
    import lorakit

    _, base_gguf, _ = tiny
    src = _adapter_src(tiny, kind)
    report = export(src, "gguf-lora", tmp_path / "a.gguf", check_prompts=0)
    assert report["pairs"] == 14 and report["tensor_types"] == {"F32": 28}
    if kind == "plain":
        assert report["folded_into_B"].startswith("none")
    else:
        assert report["folded_into_B"]   # rsLoRA / patterns: scalings folded into B
    ours = torch_logits(src.model, PROMPTS)
    with lorakit.disabled(src.model):
        base = torch_logits(src.model, PROMPTS)
    theirs = llama_logits(base_gguf, PROMPTS, lora=tmp_path / "a.gguf")
    effect, error = max_diff(ours, base), max_diff(ours, theirs)
    assert effect > 1.0, f"the adapter barely changes the output ({effect}); the test could not fail"
    assert error < 0.02 * effect, f"{kind}: llama.cpp differs by {error} (adapter effect {effect})"
    assert all((a.argmax(-1) == b.argmax(-1)).all() for a, b in zip(ours, theirs))


# relative RMS error allowed per outtype (llama.cpp's KV cache is f16 in every case)
MERGED_TOL = {"f32": 2e-3, "f16": 5e-3, "bf16": 3e-2, "q8_0": 6e-2, "q4_0": 0.4}   # random weights: the worst case for 4 bits


def _merged_errors(tiny, tmp_path, outtypes) -> dict[str, float]:
    src = _adapter_src(tiny, "rslora")
    unmerged = torch_logits(src.model, PROMPTS)
    errors = {}
    for outtype in outtypes:
        report = export(src, "gguf", tmp_path / f"{outtype}.gguf", outtype=outtype, check_prompts=0)
        if outtype != "f32":
            assert report["tensor_types"]["F32"] == 5   # the norms stay f32
        errors[outtype] = _rel_rms(unmerged, llama_logits(tmp_path / f"{outtype}.gguf", PROMPTS))
    print("relative RMS logit error by outtype:", errors)
    assert all(errors[t] < MERGED_TOL[t] for t in outtypes), errors
    return errors


def test_merged_gguf_in_llama_equals_merged_model(tiny, tmp_path):
    require_llama()
    errors = _merged_errors(tiny, tmp_path, ["f16", "q4_0"])
    assert errors["f16"] < errors["q4_0"]


@pytest.mark.heavy
def test_merged_gguf_every_outtype_in_llama(tiny, tmp_path):
    require_llama()
    errors = _merged_errors(tiny, tmp_path, list(MERGED_TOL))
    assert errors["f32"] < errors["f16"] < errors["q8_0"] < errors["q4_0"]   # follows the precision


def test_merged_f16_gguf_in_transformers_equals_merged_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    src = _adapter_src(tiny, "rank_pattern")
    export(src, "gguf", tmp_path / "m.gguf", outtype="f16", check_prompts=0)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    half = {k: v.half().float() for k, v in src.model.state_dict().items()}
    src.model.load_state_dict(half)   # the reference: the merged model's weights rounded to f16
    diff = max_diff(torch_logits(src.model, PROMPTS), torch_logits(loaded, PROMPTS))
    assert diff < 1e-4, diff


@pytest.mark.slow
def test_q_k_permutation_matches_the_embedded_gguf():
    """The embedded GGUF's attn_q/attn_k, dequantized, equal permute_qk of the converted HF
    weights (which transformers un-permuted when it read that same file)."""
    from safetensors import safe_open

    from lorakit.formats.gguf import permute_qk
    from lorakit.models import embedded_model_dir

    gguf_file = embedded_gguf("smollm2-135m-instruct")
    with safe_open(str(embedded_model_dir() / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.3.self_attn.q_proj.weight")
        k = f.get_tensor("model.layers.3.self_attn.k_proj.weight")
    stored = read_gguf_tensor(gguf_file, ["blk.3.attn_q.weight", "blk.3.attn_k.weight"])
    assert np.array_equal(permute_qk(q, 9).numpy(), stored["blk.3.attn_q.weight"])
    assert np.array_equal(permute_qk(k, 3).numpy(), stored["blk.3.attn_k.weight"])
    assert not np.array_equal(q.numpy(), stored["blk.3.attn_q.weight"])


def test_q8_0_lora_falls_back_to_f16_where_rows_do_not_fit_and_still_runs(tiny, tmp_path):
    """q8_0 blocks are 32 wide: lora_a rows (in=64/128) quantize, lora_b rows (r=8) cannot and
    are written F16, as llama.cpp's converter does; the report says which and why."""
    require_llama()
    _, base_gguf, _ = tiny
    src = _adapter_src(tiny, "plain")
    report = export(src, "gguf-lora", tmp_path / "q.gguf", outtype="q8_0", check_prompts=0)
    assert report["tensor_types"] == {"Q8_0": 14, "F16": 14}
    (reason, info), = report["fallbacks"].items()
    assert "rows of 8 not a multiple of 32" in reason and info["count"] == 14
    ours = torch_logits(src.model, PROMPTS)
    theirs = llama_logits(base_gguf, PROMPTS, lora=tmp_path / "q.gguf")
    assert _rel_rms(ours, theirs) < 0.02


def test_qlora_adapter_exports_onto_the_nf4_decoded_base(tiny, tmp_path):
    """``base_quant="nf4"``: the merged file is the NF4-decoded base + the adapter, i.e. the
    model the QLoRA adapter was trained with, not the unquantized base + the adapter."""
    require_llama()
    src = load_source(tiny[2]["plain"], base=str(tiny[0]), base_quant="nf4",
                      base_gguf=embedded_gguf("smollm2-135m-instruct"))
    qlora = torch_logits(src.model, PROMPTS)   # NF4 base + adapter, unmerged (4-bit compute dtype)
    export(src, "gguf", tmp_path / "q.gguf", outtype="f32", check_prompts=0)
    merged = torch_logits(src.model, PROMPTS)  # fp32: NF4-decoded weights + delta
    theirs = llama_logits(tmp_path / "q.gguf", PROMPTS)
    unquantized = torch_logits(_adapter_src(tiny, "plain").model, PROMPTS)
    assert _rel_rms(merged, theirs) < 2e-3
    assert _rel_rms(qlora, merged) < 3e-2
    assert _rel_rms(unquantized, theirs) > 5 * _rel_rms(qlora, merged), "NF4 made no difference"
