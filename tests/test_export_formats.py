"""Ollama Modelfile (template == the tokenizer's chat template), merged Hugging Face directory,
and bad input: refused adapters, unsupported architecture, unmapped tensors, existing outputs,
unknown types. Every error names the offending thing and leaves no file behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lorakit.export import export, load_source
from lorakit.export.source import embedded_gguf
from lorakit.formats.gguf import GGUFTensor, gguf_name, write_gguf
from lorakit.formats.modelfile import derive_chat_format, go_template, render_go
from tests.export_support import llama_logits, make_adapter, require_llama, tiny_llama_dir, torch_logits

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You answer in SQL."}, {"role": "user", "content": "count users"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "  spaces\nand {{ braces }} and \"quotes\"  "}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "é ü 中文"},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_formats")
    base = tiny_llama_dir(root / "base")
    return base, make_adapter(str(base), root / "plain", "plain")


def _src(tiny, adapter=None):
    base, plain = tiny
    return load_source(adapter or plain, base=str(base), base_gguf=embedded_gguf("smollm2-135m-instruct"))


def _render(tok):
    return lambda messages, gen: tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_modelfile_template_renders_like_the_chat_template():
    from lorakit.models import load_tokenizer

    render = _render(load_tokenizer())
    template = go_template(derive_chat_format(render))
    for messages in CONVERSATIONS:
        assert render_go(template, messages) == render(messages, True)


def test_template_without_per_role_wrapper_is_refused():
    def render(messages, gen):   # numbers the turns: no fixed per-role text
        return "".join(f"[{i}] {m['content']}\n" for i, m in enumerate(messages)) + ("> " if gen else "")

    with pytest.raises(ValueError, match="per-role wrapper"):
        derive_chat_format(render)


def test_ollama_export_writes_model_and_modelfile(tiny, tmp_path):
    import gguf

    report = export(_src(tiny), "ollama", tmp_path / "ollama", outtype="q8_0", check_prompts=0)
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\nTEMPLATE \"\"\"{{ range $i, $m := .Messages }}")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    reader = gguf.GGUFReader(str(tmp_path / "ollama" / "model.gguf"))
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    assert report["files"]["model.gguf"] == (tmp_path / "ollama" / "model.gguf").stat().st_size



def test_ollama_unmerged_files_run_in_llama(tiny, tmp_path):
    require_llama()
    base, plain = tiny
    alone = load_source(None, base=str(base), base_gguf=embedded_gguf("smollm2-135m-instruct"))
    export(alone, "gguf", tmp_path / "base.gguf", outtype="f32", check_prompts=0)
    src = load_source(plain, base=str(base), base_gguf=tmp_path / "base.gguf")
    report = export(src, "ollama", tmp_path / "o", unmerged=True, check_prompts=0)
    text = (tmp_path / "o" / "Modelfile").read_text()
    assert "FROM ./base.gguf\nADAPTER ./adapter.gguf\n" in text and report["gguf"]["pairs"] == 14
    prompts = [[1, 4093, 198, 1780, 314]]
    ours = torch_logits(src.model, prompts)[0]
    theirs = llama_logits(tmp_path / "o" / "base.gguf", prompts, lora=tmp_path / "o" / "adapter.gguf")[0]
    assert abs(ours - theirs).max() < 0.02 * abs(ours).max()


def test_hf_export_is_the_merged_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import lorakit

    src = _src(tiny)
    prompts = [[1, 4093, 198, 1780, 314], [5, 6, 7]]
    expected = torch_logits(src.model, prompts)   # adapter active, unmerged
    report = export(src, "hf", tmp_path / "hf", dtype="bfloat16", check_prompts=2)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(report["files"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert loaded.dtype == torch.bfloat16 and not lorakit.inject.adapter_configs(loaded)
    got = torch_logits(loaded, prompts)
    assert max(abs(a - b).max() for a, b in zip(expected, got)) < 0.15   # bf16 weights
    assert 0 < report["agreement"]["max_abs_logit_diff_vs_fp32_merge"] < 0.5   # bf16 compute
    assert report["dtype"] == "bfloat16"
    assert 2 in GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template


@pytest.mark.parametrize("extra,needle", [
    (dict(use_dora=True), "dora"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(targets=["embed_tokens", "q_proj"]), "embedding"),
    (dict(targets=["lm_head", "q_proj"]), "lm_head adapter on a base with tied embeddings"),
    (dict(bias="lora_only"), "trained biases"),
])
def test_gguf_lora_refuses_what_llama_cannot_hold(tiny, tmp_path, extra, needle):
    base, _ = tiny
    adapter = make_adapter(str(base), tmp_path / "a", "plain", **extra)
    with pytest.raises(ValueError, match=needle) as err:
        export(_src(tiny, adapter), "gguf-lora", tmp_path / "a.gguf", check_prompts=0)
    assert "--to gguf" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]   # nothing written


def test_lm_head_adapter_on_tied_base_merges_into_its_own_output(tiny, tmp_path):
    import gguf

    base, _ = tiny
    adapter = make_adapter(str(base), tmp_path / "a", "plain", targets=["lm_head", "q_proj"])
    src = load_source(adapter, base=str(base), base_gguf=embedded_gguf("smollm2-135m-instruct"),
                      untie_for_merge=True)
    expected = torch_logits(src.model, [[1, 2, 3]])
    export(src, "gguf", tmp_path / "m.gguf", outtype="f32", check_prompts=0)
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert "output.weight" in names and "token_embd.weight" in names
    assert abs(torch_logits(src.model, [[1, 2, 3]])[0] - expected[0]).max() < 1e-4


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="architecture GPT2LMHeadModel is not supported"):
        load_source(None, base=str(tmp_path / "gpt2"))


def test_unmapped_tensor_is_named():
    with pytest.raises(ValueError, match="model.layers.0.self_attn.rotary_mix"):
        gguf_name("model.layers.0.self_attn.rotary_mix", "llama", 2)


def test_existing_output_is_refused_and_kept(tiny, tmp_path):
    out = tmp_path / "a.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="a.gguf"):
        export(_src(tiny), "gguf-lora", out, check_prompts=0)
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("fmt,outtype", [("gguf-lora", "q4_0"), ("gguf", "q4_k_m")])
def test_unknown_outtype_is_named_and_leaves_nothing(tiny, tmp_path, fmt, outtype):
    with pytest.raises(ValueError, match=f"unknown --outtype '{outtype}'"):
        export(_src(tiny), fmt, tmp_path / "x.gguf", outtype=outtype, check_prompts=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path):
    good = GGUFTensor("blk.0.attn_q.weight", torch.ones(32, 32).numpy(), "F16")
    bad = GGUFTensor("blk.0.attn_k.weight", torch.ones(32, 32).numpy(), "Q4_K")
    with pytest.raises(ValueError, match="Q4_K"):
        write_gguf(tmp_path / "m.gguf", "llama", {}, [good, bad])
    assert list(tmp_path.iterdir()) == []


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lorakit.cli", "export", str(tmp_path / "missing"),
                           "--to", "gguf-lora", "--out", str(tmp_path / "x.gguf")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lorakit export: error: not an adapter directory")
    assert "Traceback" not in proc.stderr


def test_adapter_trained_on_the_embedded_model_exports_onto_it(tmp_path):
    """`lorakit train` records the embedded SmolLM2's Hub id as the base; the export maps it
    (and the converted cache directory) back to the embedded model, whose GGUF llama.cpp runs."""
    from lorakit.export.source import resolve_base
    from lorakit.models import cache_dir
    from lorakit.train.build import base_model_id

    for recorded in (base_model_id("smollm2-135m-instruct"), str(cache_dir() / "smollm2-135m-instruct")):
        (tmp_path / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
             "base_model_name_or_path": recorded}))
        assert resolve_base(tmp_path, None) == "smollm2-135m-instruct", recorded
    assert resolve_base(tmp_path, "other/model") == "other/model"
