"""Preference tuning: losses against TRL's code, data formats, parity with TRL's DPOTrainer +
PEFT (log-probs, loss, adapter gradients), ``lorakit train --method ...`` runs and bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import lorakit
from lorakit.preference import losses
from lorakit.preference.data import load_preferences, split_prompt
from lorakit.preference.logps import collate_pairs, completion_logps, kl_examples
from lorakit.train.formats import IGNORE, RowError
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data, write_jsonl)


def _pairs(n: int = 16) -> list[dict]:
    """A learnable toy preference: the chosen answer is the right sum."""
    return [{"prompt": f"Question {i}: what is {i}+1?\n", "chosen": f"It is {i + 1}.",
             "rejected": f"Maybe {i + 3} or so"} for i in range(n)]


# ---- the losses, against TRL's source -------------------------------------------------------
def _logps(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(n, generator=g, dtype=torch.float64) * 20 - 1 for _ in range(4)]


def test_dpo_ipo_simpo_losses_match_trl_formulas():
    pc, pr, rc, rr = _logps(0)
    tc, tr = torch.tensor([3, 5, 7, 2, 9, 4.0]), torch.tensor([4, 4, 6, 8, 1, 5.0])
    beta = 0.2
    dpo = losses.dpo_loss(pc, pr, rc, rr, beta)
    # DPOTrainer "sigmoid": -logsigmoid(beta * (chosen_logratios - rejected_logratios))
    assert torch.allclose(dpo.per_example, -F.logsigmoid(beta * ((pc - rc) - (pr - rr))))
    assert torch.allclose(dpo.chosen_rewards, beta * (pc - rc))
    ipo = losses.ipo_loss(pc, pr, rc, rr, tc, tr, beta)
    expected = ((pc - rc) / tc - (pr - rr) / tr - 1 / (2 * beta)) ** 2
    assert torch.allclose(ipo.per_example, expected)
    simpo = losses.simpo_loss(pc, pr, tc, tr, beta, gamma=0.5)
    # CPOTrainer "simpo": logits = (avg_c - avg_r) - gamma / beta; -logsigmoid(beta * logits)
    logits = (pc / tc - pr / tr) - 0.5 / beta
    assert torch.allclose(simpo.per_example, -F.logsigmoid(beta * logits))
    assert torch.allclose(simpo.chosen_rewards, beta * pc / tc)


def test_orpo_loss_matches_trl_odds_ratio():
    pc, pr, _, _ = _logps(1)
    tc, tr = torch.full((6,), 4.0, dtype=torch.float64), torch.full((6,), 5.0, dtype=torch.float64)
    terms = losses.orpo_loss(pc, pr, tc, tr, -pc.sum(), beta=0.1)
    ac, ar = pc / tc, pr / tr
    log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
    assert torch.allclose(terms.per_example, -0.1 * F.logsigmoid(log_odds))
    # ORPOTrainer: loss = nll - mean(beta * logsigmoid(log_odds)); nll = mean over chosen tokens
    loss = losses.step_loss(terms, n_examples=6, n_chosen_tokens=24)
    assert torch.allclose(loss, -pc.sum() / 24 - (0.1 * F.logsigmoid(log_odds)).mean())
    x = torch.tensor([-1e-9, -0.5, -0.7, -5.0, -60.0], dtype=torch.float64)
    assert torch.allclose(losses.log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-6)


def test_kto_loss_and_kl_match_trl():
    logps, ref, kl_p, kl_r = _logps(2)
    desirable = torch.tensor([True, False, True, True, False, False])
    kl = losses.kto_kl(kl_p, kl_r)
    assert kl == (kl_p - kl_r).mean().clamp(min=0)
    terms = losses.kto_loss(logps, ref, desirable, kl, beta=0.1, desirable_weight=1.5)
    ratio = logps - ref
    chosen = 1.5 * (1 - torch.sigmoid(0.1 * (ratio[desirable] - kl)))
    rejected = 1 - torch.sigmoid(0.1 * (kl - ratio[~desirable]))
    # KTOTrainer: losses = cat(desirable, undesirable); loss = losses.nanmean()
    assert torch.allclose(terms.per_example.mean(), torch.cat([chosen, rejected]).mean())
    assert torch.allclose(terms.chosen_rewards, 0.1 * ratio[desirable])


def test_bradley_terry_and_step_normalisation():
    c, r = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    terms = losses.bradley_terry_loss(c, r)
    assert torch.allclose(terms.per_example, -F.logsigmoid(c - r))
    m = losses.metrics(terms)
    assert m["rewards/accuracies"] == pytest.approx(1 / 3) and m["rewards/margins"] == pytest.approx(-1 / 6)
    # two micro-batches of a step add up to the whole step's mean
    a, b = losses.bradley_terry_loss(c[:1], r[:1]), losses.bradley_terry_loss(c[1:], r[1:])
    assert torch.allclose(losses.step_loss(a, 3, 0) + losses.step_loss(b, 3, 0), terms.per_example.mean())


# ---- data formats ---------------------------------------------------------------------------
def test_prompt_extraction_for_the_common_variants():
    hh = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello there.",
          "rejected": "\n\nHuman: Hi?\n\nAssistant: Hello you."}
    assert split_prompt(hh, "x") == ("\n\nHuman: Hi?\n\nAssistant:", " Hello there.", " Hello you.")
    user = {"role": "user", "content": "2+2?"}
    uf = {"prompt": "2+2?", "chosen": [user, {"role": "assistant", "content": "4"}],
          "rejected": [user, {"role": "assistant", "content": "5"}]}
    assert split_prompt(uf, "x") == ([user], [{"role": "assistant", "content": "4"}],
                                     [{"role": "assistant", "content": "5"}])
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}
    assert split_prompt(explicit, "x")[0] == [user]


def test_pairs_mask_the_prompt_and_batch_chosen_then_rejected(tmp_path, tokenizer):
    user = {"role": "user", "content": "2+2?"}
    rows = [{"prompt": [user], "chosen": [{"role": "assistant", "content": "4"}],
             "rejected": [{"role": "assistant", "content": "five, I think"}]}, _pairs(1)[0]]
    data = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer)
    chat, text = data.items
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert all(t == IGNORE for t in chat.chosen.labels[:n_prompt])
    assert tokenizer.decode([t for t in chat.chosen.labels if t >= 0]).startswith("4<|im_end|>")
    assert text.chosen.input_ids[-1] == tokenizer.eos_token_id  # strings get EOS, as in TRL
    batch = collate_pairs(data.items, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][1, :len(text.chosen.input_ids)].tolist() == text.chosen.input_ids
    assert batch["input_ids"][3, :len(text.rejected.input_ids)].tolist() == text.rejected.input_ids


def test_kto_rows_and_mismatched_kl_rows(tmp_path, tokenizer):
    rows = [{"prompt": "a?\n", "completion": "yes", "label": True},
            {"prompt": "b?\n", "completion": "no way", "label": False}]
    data = load_preferences(str(write_jsonl(tmp_path / "k.jsonl", rows)), tokenizer, unpaired=True)
    kl = kl_examples(data.items)
    first, second = data.items
    assert kl[0].input_ids == (first.example.input_ids[:first.prompt_len]
                               + second.example.input_ids[second.prompt_len:])
    paired = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", _pairs(2))), tokenizer, unpaired=True)
    assert [x.desirable for x in paired.items] == [True, False, True, False]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "rejected": "b"}, "missing field 'chosen'"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen' must be a string"),
])
def test_bad_rows_name_file_and_line(tmp_path, tokenizer, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", _pairs(2) + [row])
    with pytest.raises(RowError, match=f"{path}:3: {message}"):
        load_preferences(str(path), tokenizer)


# ---- parity with TRL's DPOTrainer + PEFT ----------------------------------------------------
def _trl_setup(tiny_model_dir, tokenizer, tmp_path, loss_type: str, retrain: bool):
    """TRL DPOTrainer + PEFT on 4 pairs, the adapter moved off its init so that policy and
    reference differ; returns (trainer, its first batch, an identical lorakit model)."""
    pytest.importorskip("trl", minversion="1.16.0",
                        reason="parity with TRL DPOTrainer needs trl >= 1.16: pip install 'trl==1.16.0'")
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ours = copy.deepcopy(base)
    peft_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=1,
                     beta=0.1, loss_type=[loss_type], report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, save_strategy="no", dataset_num_proc=None)
    torch.manual_seed(0)
    if retrain:  # an existing adapter: TRL keeps its initial copy as the "ref" adapter
        model = get_peft_model(base, peft_cfg)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.3)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_pairs(4)),
                             processing_class=tokenizer)
    else:  # a new adapter: the reference is the base, adapter disabled
        trainer = DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(_pairs(4)),
                             processing_class=tokenizer, peft_config=peft_cfg)
    peft_model = trainer.model
    ref_state = {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".default." in n}
    for n, p in peft_model.named_parameters():  # the policy moves away from the reference
        if ".default." in n:
            p.data.add_(torch.randn_like(p) * 0.2)
    prefix = "base_model.model."
    lorakit.add_adapter(ours, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    if retrain:
        lorakit.add_adapter(ours, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     inference_mode=True), name="reference")
        lorakit.set_adapter(ours, "default")
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if ".default." in n:
                p.copy_(dict(peft_model.named_parameters())[prefix + n])
            elif ".reference." in n:
                p.copy_(ref_state[prefix + n.replace(".reference.", ".default.")])
    return trainer, next(iter(trainer.get_train_dataloader())), ours


def _trl_logps(trainer, batch):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(dim=1)


@pytest.mark.parametrize("loss_type, method, retrain, fast", [
    ("sigmoid", "dpo", False, False), ("sigmoid", "dpo", False, True), ("sigmoid", "dpo", True, True),
    ("ipo", "ipo", False, False), ("ipo", "ipo", False, True)])
def test_parity_with_trl_dpo_trainer(tmp_path, tiny_model_dir, tokenizer, loss_type, method, retrain, fast):
    """Same tokens, per-example log-probs (rtol 1e-5), loss (rel 1e-5) and adapter gradients
    (max error 1e-4 of each tensor's largest entry) as TRL, fp32, plain and fast paths."""
    from lorakit.fast import enable_fast_training
    from lorakit.preference.step import StepContext, pair_terms

    trainer, batch, ours = _trl_setup(tiny_model_dir, tokenizer, tmp_path, loss_type, retrain)
    data = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", _pairs(4))), tokenizer)
    # TRL's dataloader may shuffle: match its rows to ours by token ids
    rows = [r[m.bool()].tolist() for r, m in zip(batch["input_ids"][:4], batch["attention_mask"][:4])]
    ids = [p.chosen.input_ids for p in data.items]
    pairs = [data.items[ids.index(r)] for r in rows]
    ours_batch = collate_pairs(pairs, tokenizer.pad_token_id)
    assert torch.equal(ours_batch["input_ids"], batch["input_ids"])
    assert torch.equal(ours_batch["labels"][:, 1:] != IGNORE, batch["completion_mask"][:, 1:].bool())

    ours.train()
    handle = enable_fast_training(ours) if fast else None
    trl_logps = _trl_logps(trainer, batch)
    our_logps, _ = completion_logps(ours, ours_batch, chunked=fast)
    assert torch.allclose(our_logps, trl_logps, rtol=1e-5, atol=1e-4)

    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()
    ctx = StepContext(ours, method, beta=0.1, has_ref_adapter=retrain, chunked=fast,
                      pad_id=tokenizer.pad_token_id)
    terms = pair_terms(ctx, pairs)
    loss = losses.step_loss(terms, 4, 0)
    loss.backward()
    assert abs(loss.item() - math.log(2)) > 1e-3  # policy != reference: a real test of the ratios
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    trl_grads = {n.removeprefix("base_model.model."): p.grad for n, p in trainer.model.named_parameters()
                 if p.requires_grad}
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(our_grads) == set(trl_grads)
    for n, g in our_grads.items():
        # tolerance: 1e-4 of the tensor's largest entry (fp32 sums in a different order)
        assert (g - trl_grads[n]).abs().max() <= 1e-4 * trl_grads[n].abs().max(), n
    if handle:
        handle.disable()


def test_second_all_linear_adapter_does_not_nest_into_base_layers():
    """The reference adapter is a second all-linear adapter on the same layers (it once also
    wrapped each ``base_layer``, nesting LoRA inside LoRA)."""
    from tests import tiny

    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"), name="reference")
    names = [n for n, _ in model.named_parameters()]
    assert not any(".base_layer.lora_" in n for n in names)
    assert "model.layers.0.self_attn.q_proj.lora_A.reference.weight" in names


# ---- lorakit train --method ... -------------------------------------------------------------
def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def prefs(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", _pairs(16))


def test_dpo_run_learns_the_preference_and_logs_rewards(tmp_path, make_config, prefs):
    from lorakit.train import train

    cfg = make_config(method="dpo", data=str(prefs), eval_data=str(prefs), max_steps=12,
                      lr=2e-2, beta=0.5)
    out = train(cfg)
    records = _records(tmp_path / "run")
    steps = [r for r in records if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(steps[0])
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # new adapter = reference
    final = [r for r in records if "eval_loss" in r][-1]
    assert final["eval_loss"] < 0.5 and final["eval_rewards/accuracies"] == 1.0
    assert (out / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "rewards.png").is_file() and (tmp_path / "run" / "loss.png").is_file()
    assert "dpo loss" in (out / "README.md").read_text()


@pytest.mark.parametrize("method", ["ipo", "orpo", "simpo", "kto", "reward"])
def test_every_method_trains_and_lowers_its_loss(tmp_path, make_config, prefs, method):
    from lorakit.train import train

    cfg = make_config(method=method, data=str(prefs), max_steps=8, lr=2e-2,
                      **({"beta": 0.5} if method != "ipo" else {}))
    out = train(cfg)
    losses_seen = [r["loss"] for r in _records(tmp_path / "run") if "loss" in r]
    assert losses_seen[-1] < losses_seen[0]
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == ("SEQ_CLS" if method == "reward" else "CAUSAL_LM")
    if method == "reward":
        assert saved["modules_to_save"] == ["score"]


def test_precomputed_reference_is_cached_and_gives_the_same_run(tmp_path, make_config, prefs):
    from lorakit.preference.reference import CACHE_NAME
    from lorakit.train import train

    live = make_config(method="dpo", data=str(prefs), max_steps=3, output_dir=str(tmp_path / "live"))
    train(live)
    cached = make_config(method="dpo", data=str(prefs), max_steps=3, precompute_ref=True,
                         output_dir=str(tmp_path / "cached"))
    train(cached)
    assert (tmp_path / "cached" / CACHE_NAME).is_file()
    a, b = _records(tmp_path / "live"), _records(tmp_path / "cached")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    # a second run with the same inputs reads the cache (written once: same mtime)
    mtime = (tmp_path / "cached" / CACHE_NAME).stat().st_mtime_ns
    train(make_config(method="dpo", data=str(prefs), max_steps=3, precompute_ref=True,
                      output_dir=str(tmp_path / "cached"), overwrite=True))
    assert (tmp_path / "cached" / CACHE_NAME).stat().st_mtime_ns == mtime


def test_on_top_of_an_sft_adapter_the_sft_adapter_is_the_reference(tmp_path, make_config, prefs):
    from safetensors.torch import load_file

    from lorakit.train import train

    sft = train(make_config(max_steps=4, output_dir=str(tmp_path / "sft")))
    out = train(make_config(method="dpo", data=str(prefs), max_steps=3, ref_adapter=str(sft),
                            output_dir=str(tmp_path / "dpo")))
    first = _records(tmp_path / "dpo")[0]
    # step 1: the policy is a copy of the SFT adapter, so policy == reference exactly
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    before, after = load_file(sft / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)


def test_reference_adapter_that_does_not_fit_is_refused_before_training(tmp_path, make_config, prefs):
    from lorakit.train import train

    sft = train(make_config(max_steps=1, output_dir=str(tmp_path / "sft"), lora={"r": 8}))
    weights = sft / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = torch.zeros(8, 3)  # an adapter for another base (hidden size 3)
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=f"ref_adapter {sft} does not fit the base model:.*{key.split('.lora_A')[0]}"):
        train(make_config(method="dpo", data=str(prefs), max_steps=2, ref_adapter=str(sft),
                          output_dir=str(tmp_path / "dpo")))
    assert not (tmp_path / "dpo").exists()  # refused before the run directory was touched


def test_preference_settings_are_checked(make_config, prefs):
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_config(method="dpo", data=str(prefs), beta=0.0)
    with pytest.raises(ValueError, match="need a method with a reference model"):
        make_config(method="orpo", data=str(prefs), precompute_ref=True)
    with pytest.raises(ValueError, match="kto needs batch_size >= 2"):
        make_config(method="kto", data=str(prefs), batch_size=1)


def test_cli_reports_a_bad_row_with_file_and_line(tmp_path, tiny_model_dir, capsys):
    from lorakit.cli import main

    path = write_jsonl(tmp_path / "bad.jsonl", _pairs(3) + [{"prompt": "q", "rejected": "r"}])
    code = main(["train", "--method", "dpo", "--data", str(path), "--model", str(tiny_model_dir),
                 "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:4: missing field 'chosen'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written: rows are checked before anything else


# ---- lorakit eval on preference data --------------------------------------------------------
def _eval(*argv) -> dict:
    from lorakit.cli import main

    assert main(["eval", *argv]) == 0


def test_eval_reports_preference_accuracy_of_dpo_and_reward_adapters(tmp_path, make_config, prefs,
                                                                     tiny_model_dir):
    from lorakit.train import train

    dpo = train(make_config(method="dpo", data=str(prefs), max_steps=8, lr=2e-2, beta=0.5,
                            output_dir=str(tmp_path / "dpo")))
    rm = train(make_config(method="reward", data=str(prefs), max_steps=8, lr=2e-2,
                           output_dir=str(tmp_path / "rm")))
    common = ["--model", str(tiny_model_dir), "--data", str(prefs), "--dtype", "float32"]
    _eval(*common, "--adapter", str(dpo), "--out", str(tmp_path / "dpo.json"))
    res = json.loads((tmp_path / "dpo.json").read_text())["results"]
    assert res["adapter"]["reward_accuracy"] == 1.0 and res["adapter"]["n"] == 16
    assert res["adapter"]["logp_accuracy"] > res["base"]["logp_accuracy"]
    _eval(*common, "--adapter", str(rm), "--task", "seq_cls", "--out", str(tmp_path / "rm.json"))
    res = json.loads((tmp_path / "rm.json").read_text())["results"]
    assert res["adapter"]["accuracy"] >= 0.9 and res["adapter"]["margin"] > 0
