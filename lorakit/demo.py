"""``make demo``: fine-tune the embedded SmolLM2-135M-Instruct on a small text-to-SQL task and
show that the adapter does what the base model cannot.

    python -m lorakit.demo [--config examples/sql_demo.yaml] [--show 5]

1. score the base model on the 50 held-out questions of ``data/sql_demo/test.jsonl``
   (greedy decoding, batched, exact match of the SQL string);
2. train with ``lorakit train examples/sql_demo.yaml`` (the same entry point and config);
3. load the adapter into the same base model and score it on the same questions;
4. print a few questions with both answers, and both scores.

The task (``data/make_sql_demo.py``) asks for one canonical query shape over a table the model
has never seen, so the base model's answers are SQL-like but never exact.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = ROOT / "data" / "sql_demo" / "test.jsonl"
CONFIG_FILE = ROOT / "examples" / "sql_demo.yaml"


def answer_all(model, tokenizer, evalset) -> tuple[list[str], float, float]:
    """Greedy answers to every prompt of ``evalset``, their exact-match score and their
    normalised exact-match score (case, punctuation and spacing ignored)."""
    from lorakit.eval.generate import greedy_generate
    from lorakit.eval.metrics import exact_match, mean, normalized_exact_match

    answers = greedy_generate(model, tokenizer, evalset.prompts, max_new_tokens=40, batch_size=25)
    pairs = list(zip(answers, evalset.references))
    return (answers, mean([exact_match(a, r) for a, r in pairs]),
            mean([normalized_exact_match(a, r) for a, r in pairs]))


def _config(path: Path):
    from lorakit.train.config_io import from_dict, load_yaml

    return from_dict(load_yaml(path), str(path))  # its paths are relative to the file


def _show(evalset, base: list[str], tuned: list[str], n: int) -> None:
    for k in range(min(n, len(base))):
        question = evalset.data.examples[k].where
        print(f"\n[{question.rsplit('/', 1)[-1]}]")
        print(f"  expected: {evalset.references[k]}")
        print(f"  base    : {base[k][:110]!r}")
        print(f"  adapter : {tuned[k][:110]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    parser.add_argument("--show", type=int, default=5, help="held-out prompts to print")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    import lorakit
    from lorakit.eval.prompts import load_eval_set
    from lorakit.models import load_model, load_tokenizer
    from lorakit.train import train

    hf_logging.disable_progress_bar()  # weight-loading bars; the training bar stays
    cfg = _config(args.config)
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    evalset = load_eval_set(str(TEST_FILE), tokenizer)
    model = load_model(cfg.model, dtype="bfloat16").eval()

    print(f"== 1/3 base model on {len(evalset.prompts)} held-out questions")
    t = time.perf_counter()
    base_answers, base_score, base_loose = answer_all(model, tokenizer, evalset)
    print(f"base exact match: {base_score:.0%}, normalised {base_loose:.0%} "
          f"({time.perf_counter() - t:.0f} s)")

    print(f"\n== 2/3 lorakit train {args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}")
    t = time.perf_counter()
    adapter_dir = train(cfg, command=["lorakit", "train", str(args.config)])
    train_seconds = time.perf_counter() - t

    print("\n== 3/3 the same base model with the adapter")
    lorakit.load_adapter(model, adapter_dir)
    tuned_answers, tuned_score, tuned_loose = answer_all(model, tokenizer, evalset)

    _show(evalset, base_answers, tuned_answers, args.show)
    print(f"\nexact match on {len(evalset.prompts)} held-out questions: "
          f"base {base_score:.0%}  ->  LoRA adapter {tuned_score:.0%}   "
          f"(normalised: {base_loose:.0%} -> {tuned_loose:.0%})")
    print(f"training {train_seconds:.0f} s, demo total {time.perf_counter() - started:.0f} s; "
          f"adapter and model card in {adapter_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
