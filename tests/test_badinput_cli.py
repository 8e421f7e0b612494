"""Bad input to the command line, table-driven: each command line below must end with exit
code 2 and one line ``lorakit CMD: error: ...`` that names the offending flag, file or tensor;
no traceback, nothing written (no output file or directory, not even an empty one), and the
inputs untouched. Most cases call ``lorakit.cli.main`` in-process; a few run the real
``python -m lorakit.cli`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.cli import main
from tests import badinput
from tests.test_eval_cli import _config, byte_tokenizer

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
UNWRITABLE = "/sys/lorakit-badinput"  # a read-only file system even for root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny model directory, adapters good and bad, data, an empty dir and a regular file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    r = tmp_path_factory.mktemp("cli-inputs")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(len(tok))).eval()
    model.save_pretrained(r / "model")
    tok.save_pretrained(r / "model")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False), name="a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["embed_tokens"], init_lora_weights=False),
                        name="emb")
    lorakit.save_adapter(model, r / "adapter", name="a")
    lorakit.save_adapter(model, r / "adapter_emb", name="emb")
    for name, edit in {"nan": lambda t: t[f"{Q0}.lora_A.weight"].view(-1).__setitem__(0, float("nan")),
                       "inf": lambda t: t[f"{Q0}.lora_B.weight"].view(-1).__setitem__(5, float("inf")),
                       "int": lambda t: t.update({f"{Q0}.lora_A.weight": t[f"{Q0}.lora_A.weight"].long()}),
                       "shape": lambda t: t.update({f"{Q0}.lora_A.weight": torch.zeros(4, 32)})}.items():
        shutil.copytree(r / "adapter", r / f"adapter_{name}")
        tensors = load_file(str(r / "adapter" / "adapter_model.safetensors"))
        edit(tensors)
        save_file(tensors, str(r / f"adapter_{name}" / "adapter_model.safetensors"))
    shutil.copytree(r / "adapter", r / "adapter_list")
    (r / "adapter_list" / "adapter_config.json").write_text("[]")
    shutil.copytree(r / "adapter", r / "adapter_pickle")
    (r / "adapter_pickle" / "adapter_model.safetensors").rename(r / "adapter_pickle" / "adapter_model.bin")
    shutil.copytree(r / "adapter", r / "adapter_garbage")
    (r / "adapter_pickle" / "adapter_model.bin").write_bytes(b"\x80\x04garbage")
    (r / "adapter_garbage" / "adapter_model.safetensors").write_bytes(b"garbage")
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    other.save_pretrained(r / "other")
    tok.save_pretrained(r / "other")
    (r / "syntax.py").write_text("def fn(p, r):\n    return (\n")
    (r / "empty").mkdir()
    (r / "afile").write_text("a regular file")
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(4)]
    (r / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return r


M = ["--model", "{R}/model"]
TRAIN = ["train", *M, "--data", "{R}/data.jsonl", "--precision", "fp32", "--no-progress"]

# id -> (argv with {R} = the inputs directory and {T} = this case's empty output directory, stderr regex)
CASES = {
    # lorakit merge
    "merge-out-regular-file": (["merge", *M, "--adapter", "{R}/adapter", "--out", "{R}/afile"],
                               r"--out .*afile is a regular file"),
    "merge-out-below-file": (["merge", *M, "--adapter", "{R}/adapter", "--out", "{R}/afile/merged"],
                             r"--out .*afile/merged cannot be created \(below .*afile, which is a regular file\)"),
    "merge-out-unwritable": (["merge", *M, "--adapter", "{R}/adapter", "--out", UNWRITABLE + "/m"],
                             r"--out /sys/lorakit-badinput/m is not writable"),
    "merge-model-empty-dir": (["merge", "--model", "{R}/empty", "--adapter", "{R}/adapter", "--out", "{T}/m"],
                              r"model directory .*empty has no model files \(no config.json; it is empty\)"),
    "merge-model-is-file": (["merge", "--model", "{R}/afile", "--adapter", "{R}/adapter", "--out", "{T}/m"],
                            r"model path .*afile is a file, not a model directory"),
    "merge-model-missing": (["merge", "--model", "{R}/nothing/here", "--adapter", "{R}/adapter", "--out", "{T}/m"],
                            r"model path not found: .*nothing/here"),
    "merge-adapter-missing": (["merge", *M, "--adapter", "{R}/nothing", "--out", "{T}/m"],
                              r"no adapter_config.json in .*nothing"),
    "merge-adapter-empty-dir": (["merge", *M, "--adapter", "{R}/empty", "--out", "{T}/m"],
                                r"no adapter_config.json in .*empty"),
    "merge-adapter-is-file": (["merge", *M, "--adapter", "{R}/afile", "--out", "{T}/m"],
                              r"afile is a file; an adapter is a directory"),
    "merge-adapter-nan": (["merge", *M, "--adapter", "{R}/adapter_nan", "--out", "{T}/m"],
                          rf"adapter_nan/adapter_model.safetensors: tensor {Q0}.lora_A.weight holds 1 NaN/inf"),
    "merge-adapter-int": (["merge", *M, "--adapter", "{R}/adapter_int", "--out", "{T}/m"],
                          rf"tensor {Q0}.lora_A.weight has dtype torch.int64"),
    "merge-adapter-shape": (["merge", *M, "--adapter", "{R}/adapter_shape", "--out", "{T}/m"],
                            rf"tensor {Q0}.lora_A.weight has shape \(4, 32\) but the model expects \(4, 64\)"),
    "merge-adapter-json-list": (["merge", *M, "--adapter", "{R}/adapter_list", "--out", "{T}/m"],
                                r"adapter_list/adapter_config.json: holds a JSON list"),
    "merge-adapter-pickle": (["merge", *M, "--adapter", "{R}/adapter_pickle", "--out", "{T}/m"],
                             r"only adapter_model.bin \(pickle\) found"),
    "merge-adapter-garbage": (["merge", *M, "--adapter", "{R}/adapter_garbage", "--out", "{T}/m"],
                              r"adapter_garbage/adapter_model.safetensors: not a readable safetensors file"),
    "merge-model-mismatch": (["merge", "--model", "{R}/other", "--adapter", "{R}/adapter", "--out", "{T}/m"],
                             rf"tensor {Q0}.lora_A.weight has shape \(4, 64\) but the model expects \(4, 32\)"),
    "merge-out-empty": (["merge", *M, "--adapter", "{R}/adapter", "--out", ""], r"--out is empty"),
    "merge-dtype": (["merge", *M, "--adapter", "{R}/adapter", "--out", "{T}/m", "--dtype", "int8"],
                    r"argument --dtype: invalid choice: 'int8'"),
    "merge-no-adapter": (["merge", *M, "--out", "{T}/m"], r"the following arguments are required: --adapter"),
    # lorakit inspect
    "inspect-nan": (["inspect", "{R}/adapter_nan", "--out", "{T}/i"],
                    rf"tensor {Q0}.lora_A.weight holds 1 NaN/inf value"),
    "inspect-inf": (["inspect", "{R}/adapter_inf", "--out", "{T}/i"], rf"tensor {Q0}.lora_B.weight holds 1 NaN/inf"),
    "inspect-int": (["inspect", "{R}/adapter_int", "--out", "{T}/i"], r"has dtype torch.int64"),
    "inspect-vs-no-common-layer": (["inspect", "{R}/adapter", "--vs", "{R}/adapter_emb", "--out", "{T}/i"],
                                   r"--vs .*adapter_emb: the two adapters share no adapted module"),
    "inspect-vs-missing": (["inspect", "{R}/adapter", "--vs", "{R}/nothing", "--out", "{T}/i"],
                           r"no adapter_config.json in .*nothing"),
    "inspect-vs-nan": (["inspect", "{R}/adapter", "--vs", "{R}/adapter_nan", "--out", "{T}/i"],
                       r"adapter_nan/adapter_model.safetensors: tensor .* NaN/inf"),
    "inspect-out-regular-file": (["inspect", "{R}/adapter", "--out", "{R}/afile"], r"--out .*afile is a regular file"),
    "inspect-out-below-file": (["inspect", "{R}/adapter", "--out", "{R}/afile/x"], r"--out .*afile/x cannot be created"),
    "inspect-out-unwritable": (["inspect", "{R}/adapter", "--out", UNWRITABLE], r"--out /sys/lorakit-badinput is not writable"),
    "inspect-out-empty": (["inspect", "{R}/adapter", "--out", " "], r"--out is empty"),
    "inspect-subject": (["inspect", "{R}/adapter", "--subject", "B", "--out", "{T}/i"],
                        r"argument --subject: invalid choice: 'B'"),
    "inspect-missing": (["inspect", "{R}/nothing", "--out", "{T}/i"], r"no adapter_config.json in .*nothing"),
    "inspect-garbage": (["inspect", "{R}/adapter_garbage", "--out", "{T}/i"], r"not a readable safetensors file"),
    "inspect-pickle": (["inspect", "{R}/adapter_pickle", "--out", "{T}/i"], r"adapter_model.safetensors"),
    "inspect-base-empty": (["inspect", "{R}/adapter", "--base", "{R}/empty", "--out", "{T}/i"],
                           r"model directory .*empty has no model files"),
    "inspect-base-mismatch": (["inspect", "{R}/adapter", "--base", "{R}/other", "--out", "{T}/i"],
                              r"model.layers.0.self_attn.q_proj: base weight \(32, 32\) does not match the update's "
                              r"\[out, in\] = \[64, 64\]"),
    # lorakit eval
    "eval-batch-size-0": (["eval", *M, "--data", "{R}/data.jsonl", "--batch-size", "0", "--out", "{T}/e.json"],
                          r"argument --batch-size: must be a positive integer, got 0"),
    "eval-batch-size-neg": (["eval", *M, "--data", "{R}/data.jsonl", "--batch-size", "-3", "--out", "{T}/e.json"],
                            r"argument --batch-size: must be a positive integer, got -3"),
    "eval-batch-size-text": (["eval", *M, "--data", "{R}/data.jsonl", "--batch-size", "many", "--out", "{T}/e.json"],
                             r"argument --batch-size: must be an integer, got 'many'"),
    "eval-max-new-tokens-0": (["eval", *M, "--data", "{R}/data.jsonl", "--max-new-tokens", "0", "--out", "{T}/e.json"],
                              r"argument --max-new-tokens: must be a positive integer"),
    "eval-max-seq-len-0": (["eval", *M, "--data", "{R}/data.jsonl", "--max-seq-len", "0", "--out", "{T}/e.json"],
                           r"argument --max-seq-len: must be a positive integer"),
    "eval-limit-neg": (["eval", *M, "--data", "{R}/data.jsonl", "--limit", "-1", "--out", "{T}/e.json"],
                       r"argument --limit: must be an integer >= 0, got -1"),
    "eval-out-is-dir": (["eval", *M, "--data", "{R}/data.jsonl", "--out", "{R}/empty"], r"--out .*empty is a directory"),
    "eval-out-below-file": (["eval", *M, "--data", "{R}/data.jsonl", "--out", "{R}/afile/e.json"],
                            r"directory of --out .*afile is a regular file"),
    "eval-out-unwritable": (["eval", *M, "--data", "{R}/data.jsonl", "--out", UNWRITABLE + "/e.json"],
                            r"is not writable"),
    "eval-model-empty": (["eval", "--model", "{R}/empty", "--data", "{R}/data.jsonl", "--out", "{T}/e.json"],
                         r"model directory .*empty has no model files"),
    "eval-data-missing": (["eval", *M, "--data", "{R}/nothing.jsonl", "--out", "{T}/e.json"],
                          r"nothing.jsonl"),
    "eval-adapter-nan": (["eval", *M, "--data", "{R}/data.jsonl", "--adapter", "{R}/adapter_nan", "--no-base",
                          "--out", "{T}/e.json"], r"tensor .*lora_A.weight holds 1 NaN/inf"),
    "eval-adapter-missing": (["eval", *M, "--data", "{R}/data.jsonl", "--adapter", "{R}/nothing", "--out", "{T}/e.json"],
                             r"no adapter_config.json in .*nothing"),
    "eval-out-empty": (["eval", *M, "--data", "{R}/data.jsonl", "--out", ""], r"--out is empty"),
    "eval-scorer-no-module": (["eval", *M, "--data", "{R}/data.jsonl", "--scorer", "nosuchmod:fn", "--out", "{T}/e.json"],
                              r"scorer 'nosuchmod:fn': cannot import 'nosuchmod'"),
    "eval-scorer-syntax": (["eval", *M, "--data", "{R}/data.jsonl", "--scorer", "{R}/syntax.py:fn", "--out", "{T}/e.json"],
                           r"scorer file .*syntax.py:2: '\(' was never closed"),
    "eval-scorer-no-function": (["eval", *M, "--data", "{R}/data.jsonl", "--scorer", "{R}/syntax.py:other",
                                 "--out", "{T}/e.json"], r"scorer file .*syntax.py:2"),
    "eval-scorer-format": (["eval", *M, "--data", "{R}/data.jsonl", "--scorer", "noColon", "--out", "{T}/e.json"],
                           r"scorer 'noColon' must look like 'module:function'"),
    "eval-task": (["eval", *M, "--data", "{R}/data.jsonl", "--task", "qa", "--out", "{T}/e.json"],
                  r"argument --task: invalid choice: 'qa'"),
    # lorakit train
    "train-out-below-file": ([*TRAIN, "--output-dir", "{R}/afile/run"],
                             r"output_dir .*afile/run cannot be created \(below .*afile, which is a regular file\)"),
    "train-out-regular-file": ([*TRAIN, "--output-dir", "{R}/afile"], r"output_dir .*afile is a regular file"),
    "train-out-unwritable": ([*TRAIN, "--output-dir", UNWRITABLE + "/run"], r"output_dir /sys/lorakit-badinput/run is not writable"),
    "train-model-empty": (["train", "--model", "{R}/empty", "--data", "{R}/data.jsonl", "--output-dir", "{T}/run"],
                          r"model directory .*empty has no model files"),
    "train-batch-size-0": ([*TRAIN, "--batch-size", "0", "--output-dir", "{T}/run"], r"batch_size must be >= 1, got 0"),
    "train-epochs-0": ([*TRAIN, "--epochs", "0", "--output-dir", "{T}/run"], r"epochs must be >= 1"),
    "train-lr-0": ([*TRAIN, "--lr", "0", "--output-dir", "{T}/run"], r"lr must be > 0"),
    "train-r-0": ([*TRAIN, "--r", "0", "--output-dir", "{T}/run"], r"r must be a positive integer, got 0"),
    "train-alpha-neg": ([*TRAIN, "--lora-alpha", "-1", "--output-dir", "{T}/run"], r"lora_alpha must be a positive"),
    "train-dropout-text": ([*TRAIN, "--lora-dropout", "abc", "--output-dir", "{T}/run"],
                           r"argument --lora-dropout: invalid float value: 'abc'"),
    "train-dropout-one": ([*TRAIN, "--lora-dropout", "1", "--output-dir", "{T}/run"], r"lora_dropout must be a number in \[0, 1\)"),
    "train-layers-out-of-range": ([*TRAIN, "--layers-to-transform", "[0, 7]", "--output-dir", "{T}/run"],
                                  r"layers_to_transform: layer\(s\) \[7\] do not exist"),
    "train-target-typo": ([*TRAIN, "--target-modules", "[q_prj]", "--output-dir", "{T}/run"],
                          r"target module 'q_prj' matched no module; close module names: \['q_proj'"),
    "train-data-missing": (["train", *M, "--data", "{R}/nothing.jsonl", "--output-dir", "{T}/run"],
                           r"data not found: .*nothing.jsonl"),
    "train-config-missing": (["train", "{R}/nothing.yaml"], r"config file not found: .*nothing.yaml"),
    "train-resume-missing": (["train", "--resume", "{R}/nothing"], r"nothing: not a lorakit run directory \(no config.yaml\)"),
    # the dispatcher
    "unknown-command": (["fly"], r"argument COMMAND: invalid choice: 'fly'"),
}


def _argv(case, root, out):
    return [a.replace("{R}", str(root)).replace("{T}", str(out)) for a in CASES[case][0]]


def _run(argv) -> int:
    """``lorakit.cli.main(argv)``'s exit code, argparse's own exits included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _check_stderr(err: str, argv: list[str], match: str) -> None:
    """One line ``lorakit CMD: error: ...`` (argparse: ``lorakit[ CMD]: error: ...``), no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    prog = "lorakit" if argv[0] not in CASES_COMMANDS else f"lorakit {argv[0]}"
    assert errors[0].startswith(f"{prog}: error: "), err
    assert re.search(match, errors[0]), (match, errors[0])


CASES_COMMANDS = ("train", "eval", "serve", "merge", "inspect", "models")


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input(case, root, tmp_path, capsys):
    if UNWRITABLE in " ".join(CASES[case][0]) and not os.path.isdir("/sys"):
        pytest.skip("needs Linux /sys as a path no process can write")
    out = tmp_path / "out"
    out.mkdir()
    inputs, outputs, cwd = badinput.tree(root), badinput.tree(out), sorted(os.listdir())
    argv = _argv(case, root, out)
    assert _run(argv) == 2
    _check_stderr(capsys.readouterr().err, argv, CASES[case][1])
    assert badinput.tree(out) == outputs, "a refused command wrote output"
    assert badinput.tree(root) == inputs, "a refused command changed its inputs"
    assert sorted(os.listdir()) == cwd, "a refused command wrote into the current directory"
    assert not os.path.exists(UNWRITABLE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the /sys cases cover it")
@pytest.mark.parametrize("command", ["merge", "inspect", "train"])
def test_cli_read_only_output_dir(command, root, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = {"merge": ["merge", "--model", f"{root}/model", "--adapter", f"{root}/adapter", "--out", f"{ro}/m"],
            "inspect": ["inspect", f"{root}/adapter", "--out", f"{ro}/i"],
            "train": ["train", "--model", f"{root}/model", "--data", f"{root}/data.jsonl",
                      "--output-dir", f"{ro}/run"]}[command]
    try:
        assert _run(argv) == 2
        _check_stderr(capsys.readouterr().err, argv, r"is not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# A few real command lines: the installed entry point, a fresh interpreter, exit code and stderr.
SUBPROCESS = ["merge-out-regular-file", "eval-batch-size-0", "inspect-nan", "train-out-below-file"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_cli_bad_input_subprocess(case, root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    argv = _argv(case, root, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "lorakit.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    _check_stderr(done.stderr, argv, CASES[case][1])
    assert done.stdout == ""
    assert list(out.iterdir()) == []


def test_traceback_on_request(root, tmp_path, monkeypatch):
    """LORAKIT_TRACEBACK=1 lets the exception through, for debugging a refused input."""
    monkeypatch.setenv("LORAKIT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="is a regular file"):
        main(_argv("merge-out-regular-file", root, tmp_path))


def test_a_bare_key_error_is_a_bug_and_keeps_its_traceback(root, tmp_path, monkeypatch):
    """Only lorakit's own NotFoundError is a user error; a KeyError from a bug is not hidden."""
    import lorakit.analysis.cli as inspect_cli

    monkeypatch.setattr(inspect_cli, "read_adapter", lambda path: {}["bug"])
    with pytest.raises(KeyError, match="bug"):
        main(["inspect", str(root / "adapter"), "--out", str(tmp_path / "i")])
