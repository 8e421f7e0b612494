"""Issue #16, test (4): the trained SQL demo adapter (what ``make demo`` trains:
``examples/sql_demo.yaml``), exported as a llama.cpp LoRA file, answers the 50 held-out
questions in llama.cpp (the embedded SmolLM2 Q4_1 GGUF + the exported file) with an exact-match
score within 2 points (one question) of lorakit's own score.

lorakit's score is that of the adapter on the dequantized Q4_1 base in fp32 (the base every
export starts from, as in the other agreement tests); ``make demo`` scores in bf16, which is
printed beside it. The adapter is ``$LORAKIT_SQL_ADAPTER`` (a trained ``.../adapter`` directory)
or a fresh ``lorakit train examples/sql_demo.yaml`` run (minutes on a shared CPU: heavy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorakit.export import check, export, load_source
from lorakit.export.source import embedded_gguf
from tests.export_support import require_llama

ROOT = Path(__file__).resolve().parents[1]
BASE = "smollm2-135m-instruct"


def _sql_adapter(tmp_path: Path) -> Path:
    if os.environ.get("LORAKIT_SQL_ADAPTER"):
        return Path(os.environ["LORAKIT_SQL_ADAPTER"])
    out = tmp_path / "sql_demo"
    subprocess.run([sys.executable, "-m", "lorakit.cli", "train", str(ROOT / "examples" / "sql_demo.yaml"),
                    "--output-dir", str(out), "--no-progress"], check=True, cwd=ROOT)
    return out / "adapter"


def _score(answers: list[str], references: list[str]) -> float:
    from lorakit.eval.metrics import exact_match, mean

    return mean([exact_match(a, r) for a, r in zip(answers, references)])


@pytest.mark.heavy
def test_sql_demo_adapter_in_llama_scores_like_lorakit(tmp_path):
    require_llama()
    from lorakit.eval.generate import greedy_generate
    from lorakit.eval.prompts import load_eval_set
    from lorakit.models import load_model, load_tokenizer

    adapter = _sql_adapter(tmp_path)
    tok = load_tokenizer(BASE)
    evalset = load_eval_set(str(ROOT / "data" / "sql_demo" / "test.jsonl"), tok)
    src = load_source(adapter)
    ours = greedy_generate(src.model, tok, evalset.prompts, max_new_tokens=40, batch_size=25)
    report = export(src, "gguf-lora", tmp_path / "sql.gguf", check_prompts=4)
    lora = [{"filePath": str(tmp_path / "sql.gguf"), "scale": 1.0}]
    tokens, answer = check.llama_greedy(embedded_gguf(BASE), evalset.prompts, 40, lora)
    theirs = [tok.decode(t, skip_special_tokens=True).strip() for t in tokens]
    llama_text = [r["text"].strip() for r in answer["results"]]   # llama.cpp's own detokenizer

    import lorakit

    bf16 = load_model(BASE, dtype=torch.bfloat16).eval()   # what `make demo` scores
    lorakit.load_adapter(bf16, adapter)
    demo = greedy_generate(bf16, tok, evalset.prompts, max_new_tokens=40, batch_size=25)
    with lorakit.disabled(src.model):
        base = greedy_generate(src.model, tok, evalset.prompts, max_new_tokens=40, batch_size=25)
    score = {"lorakit_fp32_dequantized_q4_1_base": _score(ours, evalset.references),
             "llama_cpp_q4_1_plus_lora_gguf": _score(theirs, evalset.references),
             "llama_cpp_own_detokenizer": _score(llama_text, evalset.references),
             "lorakit_bf16_like_make_demo": _score(demo, evalset.references),
             "base_without_adapter_fp32": _score(base, evalset.references),
             "identical_answers": sum(a == b for a, b in zip(ours, theirs)),
             "questions": len(ours), "export_report_agreement": report["agreement"]}
    print(json.dumps(score, indent=1))
    assert score["lorakit_fp32_dequantized_q4_1_base"] >= 0.8, score   # the adapter learned the task
    assert score["base_without_adapter_fp32"] <= 0.1, score            # and the base cannot do it
    assert abs(score["llama_cpp_q4_1_plus_lora_gguf"] - score["lorakit_fp32_dequantized_q4_1_base"]) <= 0.02 + 1e-9, score
    assert score["llama_cpp_own_detokenizer"] == score["llama_cpp_q4_1_plus_lora_gguf"], score
