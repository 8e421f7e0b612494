"""The export check's batched greedy decoder (``check.lorakit_greedy``) against its reference,
one prompt at a time without padding, and the agreement it reports."""

from __future__ import annotations

import torch

from lorakit.export import check
from tests.test_train_fixtures import one_thread  # noqa: F401 (autouse: one torch thread)


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.5, eos_token_id=3, bos_token_id=1)
    return LlamaForCausalLM(cfg).eval()


def test_batched_greedy_equals_one_prompt_at_a_time():
    model = _tiny_lm()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 256, (n,), generator=g).tolist() for n in (3, 11, 7, 7, 15, 2, 9)]
    reference = check.lorakit_greedy(model, prompts, 12, {3}, batch_size=1)
    batched = check.lorakit_greedy(model, prompts, 12, {3}, batch_size=4)
    assert batched == reference
    assert len({tuple(t) for t in reference}) > 1 and max(map(len, reference)) == 12


def test_greedy_stops_at_eos_and_excludes_it():
    model = _tiny_lm()
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    full = check.lorakit_greedy(model, prompts, 10, {3}, batch_size=1)
    stop = full[0][2]   # make the third generated token of prompt 0 an end token
    cut = check.lorakit_greedy(model, prompts, 10, {stop}, batch_size=2)
    assert cut[0] == full[0][:full[0].index(stop)]
    assert stop not in cut[1] and full[1][:len(cut[1])] == cut[1]


def test_agreement_counts_the_first_divergence():
    a = check.agreement([[1, 2, 3], [4, 5], [6]], [[1, 2, 3], [4, 9, 9], [6, 7]])
    assert (a.prompts, a.identical) == (3, 1)
    assert a.first_divergence == {"prompt": 1, "position": 1, "lorakit": 5, "llama": 9}
    assert a.tokens_agreeing == (3 + 1 + 1) / (3 + 3 + 2)
