"""The one table of tiny models x adapter configs that the contract tests
(tests/test_core_contract.py) and the PEFT interop tests (tests/test_peft_interop.py) run on.

Each row is a tiny model kind (``tests/tiny.py``) and the fields of an adapter config, the
same field names in lorakit and in PEFT: plain LoRA in its layouts (linear, GPT-2 Conv1D,
embedding, conv, modules_to_save, biases, rank/alpha patterns), DoRA (``use_dora``) and VeRA
(its own adapter type). ``Case.ours`` / ``Case.peft`` build the config for either library.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    kind: str                                     # tiny.make(kind)
    fields: dict = field(default_factory=dict)    # config fields, PEFT's names
    adapter_type: str = "LORA"                    # PEFT's peft_type: LORA (DoRA too) or VERA
    peft_refuses: str = ""                        # why PEFT cannot build this adapter ("": it can)

    @property
    def mixed_batch(self) -> bool:
        """Runs in a mixed-adapter batch (``adapter_per_row``): plain LoRA only; DoRA's
        magnitude and VeRA's shared projections are refused there by name."""
        return self.adapter_type == "LORA" and not self.fields.get("use_dora")

    def ours(self, init=True, **extra):
        """The lorakit config; ``init`` is ``init_lora_weights`` (VeRA: ``init_weights``),
        False giving an adapter that changes the output."""
        import lorakit

        if self.adapter_type == "VERA":
            return lorakit.VeraConfig(init_weights=bool(init), **{**self.fields, **extra})
        return lorakit.LoraConfig(init_lora_weights=init, **{**self.fields, **extra})

    def peft(self, init=True, **extra):
        """The same config as PEFT's class."""
        import peft

        if self.adapter_type == "VERA":
            return peft.VeraConfig(init_weights=bool(init), **{**self.fields, **extra})
        return peft.LoraConfig(init_lora_weights=init, **{**self.fields, **extra})


CASES = {
    "llama-qv": Case("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "llama-all-linear-rslora": Case("llama", dict(r=8, lora_alpha=16, target_modules="all-linear",
                                                  use_rslora=True)),
    "llama-all-linear-rslora-patterns": Case("llama", dict(
        r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True,
        rank_pattern={"up_proj": 2}, alpha_pattern={"k_proj": 5})),
    "llama-regex-patterns": Case("llama", dict(r=4, target_modules=r".*layers\.1\.(mlp\.up_proj|self_attn\.k_proj)",
                                               rank_pattern={"up_proj": 2}, alpha_pattern={"k_proj": 3})),
    "llama-regex": Case("llama", dict(r=4, target_modules=r".*\.1\.mlp\.(gate|down)_proj")),
    "llama-embedding": Case("llama", dict(r=4, target_modules=["embed_tokens", "o_proj"])),
    "llama-embedding-bias": Case("llama", dict(r=4, target_modules=["embed_tokens", "o_proj"], lora_bias=True),
                                 peft_refuses="PEFT 0.21: lora_bias=True is not supported for Embedding"),
    "llama-layers": Case("llama", dict(r=4, target_modules=["gate_proj"], layers_to_transform=[1])),
    "gpt2-conv1d": Case("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"])),
    "gpt2-conv1d-fan-in-fan-out": Case("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                    fan_in_fan_out=True)),
    "bert-cls": Case("bert", dict(r=4, target_modules=["query", "value"], modules_to_save=["classifier"],
                                  bias="lora_only")),
    "bert-cls-modules-to-save": Case("bert", dict(r=4, target_modules=["query", "value"],
                                                  modules_to_save=["classifier"])),
    "bert-bias-all": Case("bert", dict(r=4, target_modules=["dense"], bias="all")),
    "bert-bias-all-qv": Case("bert", dict(r=4, target_modules=["query", "value"], bias="all")),
    "convnet": Case("convnet", dict(r=2, target_modules=["conv1", "conv2", "seq", "head"])),
    "llama-dora": Case("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                     use_dora=True)),
    "gpt2-dora-conv1d": Case("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn"], use_dora=True,
                                          fan_in_fan_out=True)),
    "llama-vera": Case("llama", dict(r=8, target_modules=["q_proj", "v_proj", "up_proj"]), adapter_type="VERA"),
}

MIXED_BATCH_CASES = [name for name, case in CASES.items() if case.mixed_batch]
PEFT_CASES = [name for name, case in CASES.items() if not case.peft_refuses]
