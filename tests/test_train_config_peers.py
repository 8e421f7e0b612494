"""Configs people bring: YAML numbers as written, every unknown key at once with a suggestion,
Axolotl / LLaMA-Factory keys, PEFT's task_type, paths relative to the file, and
`lorakit config convert`."""

from __future__ import annotations

import json

import pytest
import yaml

from lorakit.cli import main
from lorakit.train import config_io
from lorakit.train.convert import convert_file
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer, write_jsonl  # noqa: F401


def _load(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return config_io.from_dict(config_io.load_yaml(path), str(path))


@pytest.mark.parametrize("text, key, value", [
    ("lr: 1e-3", "lr", 1e-3), ("lr: 1.0e-3", "lr", 1e-3), ("lr: 2E-5", "lr", 2e-5),
    ("lr: .001", "lr", 1e-3), ("lr: 1", "lr", 1.0), ("max_steps: 1e3", "max_steps", 1000),
    ("max_steps: 1_000", "max_steps", 1000), ("batch_size: 8.0", "batch_size", 8),
    ("weight_decay: 0", "weight_decay", 0.0), ("warmup_ratio: 5e-2", "warmup_ratio", 0.05),
])
def test_yaml_numbers_as_people_write_them(tmp_path, text, key, value):
    cfg = _load(tmp_path, f"data: x.jsonl\n{text}\n")
    assert getattr(cfg, key) == value and type(getattr(cfg, key)) is type(value)


def test_non_integral_int_and_words_still_refused(tmp_path):
    with pytest.raises(ValueError, match="max_steps must be int, got 10.5"):
        _load(tmp_path, "max_steps: 10.5\n")
    with pytest.raises(ValueError, match="lr must be float, got 'fast'"):
        _load(tmp_path, "lr: fast\n")


def test_every_unknown_key_reported_at_once_with_suggestions(tmp_path):
    with pytest.raises(ValueError) as err:
        _load(tmp_path, "epochz: 3\nbatchsize: 2\nlr: fast\nflash_attention: true\n"
                        "lora:\n  rank: 4\n  alpah: 8\n")
    text = str(err.value)
    assert text.startswith("6 problems:\n")
    for line in ["unknown key 'epochz' (did you mean 'epochs'?)",
                 "unknown key 'batchsize' (did you mean 'batch_size'?)",
                 "lr must be float, got 'fast'",
                 "unknown key 'flash_attention' (no lorakit equivalent: lorakit picks the attention",
                 "lora: unknown key 'rank' (did you mean 'r'?)",
                 "lora: unknown key 'alpah' (did you mean 'lora_alpha'?)"]:
        assert line in text, line


def test_axolotl_and_llamafactory_keys_are_aliases(tmp_path):
    lorakit = _load(tmp_path, "model: m\ndata: d.jsonl\nlr: 2.0e-4\nbatch_size: 2\ngrad_accum: 4\n"
                              "epochs: 3\nmax_seq_len: 512\nprecision: bf16-true\npacking: true\n"
                              "completion_only_loss: false\nquantize: nf4\n"
                              "lora:\n  r: 16\n  lora_alpha: 32\n  lora_dropout: 0.05\n"
                              "  target_modules: [q_proj, v_proj]\n", "a.yaml")
    axolotl = _load(tmp_path, "base_model: m\ndata: d.jsonl\nlearning_rate: 2e-4\n"
                              "micro_batch_size: 2\ngradient_accumulation_steps: 4\nnum_epochs: 3\n"
                              "sequence_len: 512\nbf16: true\nsample_packing: true\n"
                              "train_on_inputs: true\nadapter: qlora\nload_in_4bit: true\nlora_r: 16\n"
                              "lora_alpha: 32\nlora_dropout: 0.05\n"
                              "lora_target_modules: [q_proj, v_proj]\n", "b.yaml")
    factory = _load(tmp_path, "model_name_or_path: m\ndata: d.jsonl\nlearning_rate: 2.0e-4\n"
                              "per_device_train_batch_size: 2\ngradient_accumulation_steps: 4\n"
                              "num_train_epochs: 3.0\ncutoff_len: 512\nbf16: true\npacking: true\n"
                              "train_on_prompt: true\nquantization_bit: 4\nfinetuning_type: lora\n"
                              "lora_rank: 16\nlora_alpha: 32\nlora_dropout: 0.05\n"
                              "lora_target: q_proj,v_proj\n", "c.yaml")
    assert lorakit == axolotl == factory
    with pytest.raises(ValueError, match="learning_rate .* and lr both given; keep lr"):
        _load(tmp_path, "lr: 0.1\nlearning_rate: 0.2\n")


def test_peft_task_type_in_the_lora_block(tmp_path):
    cfg = _load(tmp_path, "lora:\n  r: 4\n  task_type: CAUSAL_LM\n  peft_type: LORA\n")
    assert cfg.lora.r == 4
    with pytest.raises(ValueError, match="task_type 'SEQ_CLS' does not fit task 'causal_lm'"):
        _load(tmp_path, "lora:\n  task_type: SEQ_CLS\n")


@pytest.mark.parametrize("text, kind", [("- lr: 1\n", "list"), ("just words\n", "str"), ("3\n", "int")])
def test_top_level_not_a_mapping_is_one_line(tmp_path, capsys, text, kind):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"lorakit train: error: {path}: the top level must be a mapping of settings "
                   f"(key: value lines), got a {kind}\n")


def test_paths_resolve_relative_to_the_yaml_file(tmp_path, tiny_model_dir, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    write_jsonl(project / "train.jsonl", [{"instruction": "hi", "output": "yo"}])
    (project / "configs" / "run.yaml").write_text(
        f"model: {tiny_model_dir}\ndata: ../train.jsonl\noutput_dir: ../runs/a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config_io.from_dict(config_io.load_yaml("../project/configs/run.yaml"))
    assert cfg.data == str(project / "train.jsonl") and cfg.output_dir == str(project / "runs" / "a")
    assert main(["data", "preview", "../project/configs/run.yaml", "--json", "-n", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["rows"] == 1


AXOLOTL = """base_model: {model}
adapter: lora
datasets:
  - path: data/qa.jsonl
    type: alpaca
    field_instruction: question
    field_output: answer
sequence_len: 256
lora_r: 8
lora_alpha: 16
lora_target_linear: true
micro_batch_size: 2
num_epochs: 1
learning_rate: 1e-3
bf16: auto
flash_attention: true
wandb_project: demo
output_dir: ./outputs/lora
"""


def test_convert_axolotl_writes_a_config_that_trains_the_same_data(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "qa.jsonl", [{"question": "Say hi.", "answer": "Hi"}] * 4)
    source = tmp_path / "axolotl.yaml"
    source.write_text(AXOLOTL.format(model=tiny_model_dir))
    out = tmp_path / "converted" / "lorakit.yaml"
    assert main(["config", "convert", str(source), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no lorakit equivalent: flash_attention" in err and "wandb_project" in err
    values = yaml.safe_load(out.read_text())
    assert values["data"] == "../data/qa.jsonl" and values["output_dir"] == "../outputs/lora"
    assert values["columns"] == {"instruction": "question", "output": "answer"}
    assert (values["lr"], values["lora"]["target_modules"], values["precision"]) == (1e-3, "all-linear", "bf16-true")
    assert "# no lorakit equivalent (left out): flash_attention" in out.read_text()
    assert main(["train", str(out), "--dry-run", "--json", "-n", "1"]) == 0
    trained = [s["text"] for s in json.loads(capsys.readouterr().out)["examples"][0]["segments"] if s["trained"]]
    assert trained == ["Hi<|im_end|>"]


def test_convert_llamafactory_reads_dataset_info(tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
             "sys": "Be brief."}]
    (tmp_path / "data" / "chat.json").write_text(json.dumps(rows))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"my_chat": {
        "file_name": "chat.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "sys"}}}))
    source = tmp_path / "llamafactory.yaml"
    source.write_text(f"model_name_or_path: {tiny_model_dir}\nstage: sft\ndo_train: true\n"
                      "finetuning_type: lora\nlora_target: all\ndataset: my_chat\ntemplate: qwen\n"
                      "cutoff_len: 128\nlearning_rate: 1.0e-4\nnum_train_epochs: 2.0\n"
                      "output_dir: saves/lora\n")
    text, unknown = convert_file(source, tmp_path / "lorakit.yaml")
    assert set(unknown) == {"stage", "do_train", "template"}
    values = yaml.safe_load(text)
    assert (values["data"], values["format"], values["columns"]) == ("data/chat.json", "chat", {"system": "sys"})
    assert (values["epochs"], values["full"], values["lora"]["target_modules"]) == (2, False, "all-linear")


def test_convert_axolotl_hub_dataset_becomes_hf_source(tmp_path):
    source = tmp_path / "a.yaml"
    source.write_text("base_model: org/model\ndatasets:\n  - path: tatsu-lab/alpaca\n    type: alpaca\n"
                      "    split: validation\n")
    text, unknown = convert_file(source, None)
    assert yaml.safe_load(text)["data"] == "hf:tatsu-lab/alpaca:validation" and not unknown
