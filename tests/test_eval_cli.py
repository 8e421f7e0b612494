"""``lorakit eval`` end to end on tiny random models with a byte-level chat tokenizer, checked
against answers constructed from the model's own greedy outputs and Hugging Face's loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.eval.prompts import last_trained_start, load_eval_set

SYSTEM = "Answer in SQL."


def byte_tokenizer():
    """A byte-level tokenizer (every byte one token, exact round trip) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials)
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def _config(vocab: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       eos_token_id=2, pad_token_id=0, bos_token_id=None, **kw)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_lm")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(len(tok))).eval()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    adapted = copy.deepcopy(model)
    torch.manual_seed(1)
    lorakit.add_adapter(adapted, lorakit.LoraConfig(r=4, lora_alpha=32, target_modules="all-linear",
                                                    init_lora_weights=False))
    lorakit.save_adapter(adapted, root / "adapter")
    return root, tok, model, adapted


def _messages(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


def _greedy(model, tok, messages, n=8) -> str:
    """Reference generation: the chat template's generation prompt, one prompt at a time."""
    text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_cli_base_vs_adapter_exact_match_known_answer(tiny_lm, tmp_path, capsys):
    root, tok, model, adapted = tiny_lm
    questions = [f"q{i}: how many rows in table t{i}?" for i in range(6)]
    base_out = [_greedy(model, tok, _messages(q, "")) for q in questions]
    adapter_out = [_greedy(adapted, tok, _messages(q, "")) for q in questions]
    assert all(b != a for b, a in zip(base_out, adapter_out)), "the adapter must change the outputs"
    # rows 0-2 answer what the base model says, row 3 what the adapter says, rows 4-5 neither
    answers = base_out[:3] + adapter_out[3:4] + ["SELECT 1;", "SELECT 2;"]
    data = _write_jsonl(tmp_path / "test.jsonl", [{"messages": _messages(q, a)} for q, a in zip(questions, answers)])
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(root / "model"), "--adapter", str(root / "adapter"), "--data", str(data),
                 "--dtype", "float32", "--max-new-tokens", "8", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["format"] == "chat"
    base, adapter = report["results"]["base"], report["results"]["adapter"]
    assert base["exact_match"] == pytest.approx(3 / 6) and adapter["exact_match"] == pytest.approx(1 / 6)
    assert [e["prediction"] for e in report["examples"]["base"]] == base_out
    assert [e["prediction"] for e in report["examples"]["adapter"]] == adapter_out
    assert base["n"] == adapter["n"] == 6 and base["loss"] != adapter["loss"]
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "50.0%" in printed and "16.7%" in printed and "delta" in printed


def test_eval_loss_is_hugging_face_loss_on_the_answer_tokens(tiny_lm, tmp_path):
    root, tok, model, _ = tiny_lm
    messages = _messages("count the rows", "SELECT COUNT(*) FROM t;")
    data = _write_jsonl(tmp_path / "one.jsonl", [{"messages": messages}])
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(root / "model"), "--data", str(data), "--dtype", "float32",
                 "--no-generate", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["base"]
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    p_ids, rest = tok(prompt)["input_ids"], tok(full[len(prompt):])["input_ids"]
    ids = torch.tensor([p_ids + rest])
    labels = torch.tensor([[-100] * len(p_ids) + rest])
    with torch.no_grad():
        expected = model(ids, labels=labels).loss.item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)
    assert result["tokens"] == len(rest) and "exact_match" not in result


def test_eval_base_column_is_the_original_model_for_a_base_rewriting_adapter(tiny_lm, tmp_path):
    """A PiSSA adapter rewrites the base when it loads; the base column must still be the
    untouched model (the same numbers as evaluating the model alone)."""
    root, _, model, _ = tiny_lm
    pissa = copy.deepcopy(model)
    lorakit.add_adapter(pissa, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights="pissa"))
    lorakit.save_adapter(pissa, tmp_path / "pissa")
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": _messages(f"q{i}", "SELECT 1;")} for i in range(3)])
    common = ["eval", "--model", str(root / "model"), "--data", str(data), "--dtype", "float32", "--no-generate"]
    assert main(common + ["--out", str(tmp_path / "alone.json")]) == 0
    assert main(common + ["--adapter", str(tmp_path / "pissa"), "--out", str(tmp_path / "both.json")]) == 0
    alone = json.loads((tmp_path / "alone.json").read_text())["results"]["base"]
    both = json.loads((tmp_path / "both.json").read_text())["results"]
    assert both["base"]["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    # PiSSA starts at the original model: with the adapter, the loss is the same up to rounding
    assert both["adapter"]["loss"] == pytest.approx(alone["loss"], rel=1e-3)


def test_eval_user_scorer_and_normalised_match(tiny_lm, tmp_path):
    root, tok, model, _ = tiny_lm
    question = "list the names"
    said = _greedy(model, tok, _messages(question, ""), n=6)
    # the reference differs from what the model says only by trailing punctuation
    rows = [{"messages": _messages(question, said + " !?")}]
    scorer = tmp_path / "scorers.py"
    scorer.write_text("def length_gap(p, r):\n    return len(r) - len(p)\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(root / "model"), "--data", str(_write_jsonl(tmp_path / "d.jsonl", rows)),
                 "--dtype", "float32", "--max-new-tokens", "6", "--no-loss", "--scorer", f"{scorer}:length_gap",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["base"]
    assert (result["exact_match"], result["normalized_exact_match"]) == (0.0, 1.0)
    assert result["length_gap"] == 3.0 and "loss" not in result


def test_eval_instruction_prompt_is_the_training_prompt(tiny_lm, tmp_path):
    from lorakit.train.formats import instruction_prompt

    _, tok, _, _ = tiny_lm
    row = {"instruction": "Translate to SQL", "input": "all rows of t", "output": "SELECT * FROM t;"}
    evalset = load_eval_set(str(_write_jsonl(tmp_path / "i.jsonl", [row])), tok)
    assert evalset.prompts[0] == tok(instruction_prompt(row, "row"))["input_ids"]
    assert evalset.references == ["SELECT * FROM t;"]


def test_last_trained_start():
    assert last_trained_start([-100, -100, 5, 6, -100, -100, 7, 8]) == 6
    assert last_trained_start([-100, 3, 4]) == 1
    with pytest.raises(ValueError, match="no trained tokens"):
        last_trained_start([-100, -100])


def test_eval_seq_cls_accuracy_and_macro_f1(tmp_path):
    from transformers import LlamaForSequenceClassification

    from lorakit.eval.metrics import macro_f1

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_config(len(tok), num_labels=2)).eval()
    model.save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    texts = [f"review number {i} {'good' * (i % 3)}" for i in range(8)]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).tolist()
    labels = preds[:6] + [1 - p for p in preds[6:]]  # 6 of 8 right
    data = _write_jsonl(tmp_path / "cls.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels)])
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "cls"), "--task", "seq_cls", "--data", str(data),
                 "--dtype", "float32", "--batch-size", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"]["base"]
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["macro_f1"] == pytest.approx(macro_f1(preds, labels))


def test_eval_rejects_data_that_does_not_fit_the_task(tiny_lm, tmp_path, capsys):
    root, _, _, _ = tiny_lm
    data = _write_jsonl(tmp_path / "cls.jsonl", [{"text": "x", "label": 1}])
    assert main(["eval", "--model", str(root / "model"), "--data", str(data), "--out", str(tmp_path / "e.json")]) == 2
    assert "classification data does not fit --task causal_lm" in capsys.readouterr().err


@pytest.mark.slow
def test_sql_demo_prompts_are_smollm2_generation_prompts():
    """On the real tokenizer, every eval prompt of the shipped test split is exactly the chat
    template's generation prompt for the conversation without its answer."""
    from lorakit.models import load_tokenizer
    from lorakit.train.readers import read_rows

    tok = load_tokenizer("smollm2-135m-instruct")
    path = "data/sql_demo/test.jsonl"
    evalset = load_eval_set(path, tok)
    rows = read_rows(path)
    assert len(evalset.prompts) == len(rows) == 50
    for prompt, reference, row in zip(evalset.prompts, evalset.references, rows):
        messages = row.record["messages"]
        text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert prompt == tok(text, add_special_tokens=False)["input_ids"]
        assert reference == messages[-1]["content"]
