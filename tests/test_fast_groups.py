"""The fast path on whole tiny models: same outputs and gradients as the core layers, grouping
of shared inputs, and every state the core supports (merge, disable, mixed rows) still right."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.fast import disable_fast_training, enable_fast_training


def tiny_llama(dtype=torch.float64, **lora):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64)
    model = LlamaForCausalLM(cfg).to(dtype)
    kw = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights="gaussian") | lora
    lorakit.add_adapter(model, lorakit.LoraConfig(**kw))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero B, so the adapters change the outputs
            p.data.normal_(std=0.1)
    return model


def close(a, b):
    """fp64 activations: the core computes the LoRA term in the fp32 masters' dtype, the fast
    path in the activations' dtype, so they agree to fp32 precision."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def loss_and_grads(model, ids):
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def test_groups_are_found_by_shared_input():
    model = tiny_llama()
    fast = enable_fast_training(model)
    names = [[layer.module_name.rsplit(".", 1)[-1] for layer in g.layers] for g in fast.groups]
    assert names[:4] == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert fast.fused_layers == 14


@pytest.mark.parametrize("group", [True, False])
def test_fast_model_matches_core_model(group):
    ref = tiny_llama()
    model = copy.deepcopy(ref)
    fast = enable_fast_training(model, lorakit.fast.FastConfig(group_shared_inputs=group))
    assert fast.fused_layers == 14 and len(fast.groups) == (8 if group else 14)
    ids = torch.randint(0, 64, (2, 10))
    out, grads = loss_and_grads(model, ids)
    ref_out, ref_grads = loss_and_grads(ref, ids)
    close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        close(grads[n], ref_grads[n])


def test_stacked_weights_share_storage_until_disabled():
    model = tiny_llama()
    attn = model.model.layers[0].self_attn
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    fast = enable_fast_training(model)
    group = attn.q_proj.fused_forward.group
    assert attn.k_proj.base_layer.weight.untyped_storage().data_ptr() == group.weight.untyped_storage().data_ptr()
    fast.disable()
    assert attn.q_proj.fused_forward is None
    assert attn.k_proj.base_layer.weight.untyped_storage().data_ptr() != group.weight.untyped_storage().data_ptr()
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert "forward" not in vars(model.model.norm)  # the class's own RMSNorm forward again
    assert model.config._attn_implementation == "sdpa"


def test_merge_disable_and_mixed_rows_fall_back_to_core_paths():
    ref = tiny_llama()
    model = copy.deepcopy(ref)
    enable_fast_training(model)
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        with lorakit.disabled(model), lorakit.disabled(ref):
            close(model(input_ids=ids).logits, ref(input_ids=ids).logits)
        lorakit.merge(model)
        merged = model(input_ids=ids).logits  # merged weights live in the stacked storage
        lorakit.unmerge(model)
        close(merged, ref(input_ids=ids).logits)
        close(model(input_ids=ids).logits, ref(input_ids=ids).logits)
        with lorakit.adapter_per_row(model, ["default", None]), lorakit.adapter_per_row(ref, ["default", None]):
            close(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_dropout_is_reproducible_and_off_in_eval():
    model = tiny_llama(lora_dropout=0.3)
    enable_fast_training(model)
    ids = torch.randint(0, 64, (2, 8))
    model.train()
    torch.manual_seed(1)
    a = model(input_ids=ids).logits
    torch.manual_seed(1)
    b = model(input_ids=ids).logits
    c = model(input_ids=ids).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model.eval()
    ref = tiny_llama(lora_dropout=0.3).eval()
    close(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_gradient_checkpointing_recomputes_the_same_mask():
    ref = tiny_llama(lora_dropout=0.3)
    model = copy.deepcopy(ref)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in (ref, model):
        enable_fast_training(m)
        m.train()
    ids = torch.randint(0, 64, (2, 8))
    torch.manual_seed(3)
    _, grads = loss_and_grads(model, ids)
    torch.manual_seed(3)
    _, ref_grads = loss_and_grads(ref, ids)
    for n in grads:
        close(grads[n], ref_grads[n])


def test_out_of_scope_layers_keep_the_core_forward():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=80)).eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["c_attn", "c_proj"]))
    fast = enable_fast_training(model)  # GPT-2's Conv1D stores W transposed: not fused
    assert fast.fused_layers == 0


def test_enable_twice_and_without_single_active_adapter_raise():
    model = tiny_llama()
    enable_fast_training(model)
    with pytest.raises(ValueError, match="already enabled"):
        enable_fast_training(model)
    disable_fast_training(model)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules="all-linear"), name="other")
    lorakit.set_adapter(model, ["default", "other"])
    with pytest.raises(ValueError, match="one active adapter"):
        enable_fast_training(model)
