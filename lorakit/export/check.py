"""Measured agreement between an export and lorakit's own forward.

The consumer is llama.cpp, run through the npm package ``node-llama-cpp`` (its prebuilt CPU
binary) by ``tests/llama/run.mjs``; ``npm install`` in ``tests/llama`` (``make setup`` does it when
Node is present) installs it. ``$LORAKIT_LLAMA_DIR`` points elsewhere. Both sides decode
greedily from the same token ids and stop at an end-of-generation token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["PROMPTS", "Agreement", "consumer_missing", "run_llama", "llama_greedy",
           "lorakit_greedy", "agreement", "chat_prompts"]

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "Explain what a hash table is in one sentence.", "List three primary colors.",
    "How many legs does a spider have?", "Translate 'good morning' into Spanish.",
    "What is 12 times 7?", "Give me a name for a pet turtle.",
    "What does HTTP stand for?", "Describe the color blue to someone who cannot see.",
    "Why is the sky blue?", "Write a SQL query that counts the rows of a table named users.",
    "What is the boiling point of water in Celsius?", "Name a famous painting.",
    "Suggest a healthy breakfast.", "What is photosynthesis?",
    "Tell me a fun fact about octopuses.", "How do I reverse a list in Python?",
    "What is the largest planet in the solar system?", "Say hello in French.",
]


def _consumer_dir() -> Path:
    if os.environ.get("LORAKIT_LLAMA_DIR"):
        return Path(os.environ["LORAKIT_LLAMA_DIR"])
    return Path(__file__).resolve().parents[2] / "tests" / "llama"


def consumer_missing() -> str | None:
    """Why llama.cpp cannot be run here (with the install hint), or None when it can."""
    where = _consumer_dir()
    if shutil.which("node") is None:
        return "Node.js is not installed (llama.cpp runs through node-llama-cpp: install Node >= 20)"
    if not (where / "node_modules" / "node-llama-cpp").exists():
        return f"node-llama-cpp is not installed: run `npm install` in {where} (make setup does it)"
    return None


def run_llama(request: dict, timeout: float = 600) -> dict:
    """Run one request through ``run.mjs`` (see there for the JSON both ways)."""
    missing = consumer_missing()
    if missing:
        raise RuntimeError(missing)
    script = _consumer_dir() / "run.mjs"
    proc = subprocess.run(["node", str(script)], input=json.dumps(request), text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp consumer failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def llama_greedy(model_path: Path, prompts: list[list[int]], max_tokens: int,
                 lora: list[dict] | None = None, threads: int = 1) -> tuple[list[list[int]], dict]:
    """Greedy continuations from llama.cpp (the end-of-generation token excluded)."""
    answer = run_llama({"model": str(model_path), "lora": lora or [], "threads": threads,
                        "jobs": [{"tokens": p, "maxTokens": max_tokens} for p in prompts]})
    return [r["tokens"] for r in answer["results"]], answer


@torch.no_grad()
def lorakit_greedy(model, prompts: list[list[int]], max_tokens: int, eos_ids: set[int],
                   batch_size: int = 8) -> list[list[int]]:
    """Greedy continuations from a torch causal LM, stopping at any of ``eos_ids`` (excluded)
    or after ``max_tokens``; ``result[k]`` belongs to ``prompts[k]``.

    Prompts of similar length are decoded together, left-padded with an attention mask (greedy
    decoding makes the tokens independent of the batch up to float rounding); ``batch_size=1``
    decodes one prompt at a time without padding."""
    stops = sorted(eos_ids)
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[k]) for k in chunk)
        ids = torch.full((len(chunk), width), stops[0], dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, k in enumerate(chunk):
            ids[row, width - len(prompts[k]):] = torch.tensor(prompts[k])
            mask[row, width - len(prompts[k]):] = 1
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=stops[0], temperature=None,
                             top_p=None, top_k=None)
        for k, row in zip(chunk, gen[:, width:].tolist()):
            out[k] = row[:next((i for i, t in enumerate(row) if t in eos_ids), len(row))]
    return out


@dataclass
class Agreement:
    """Greedy agreement of two decoders over the same prompts."""

    prompts: int
    identical: int                  # prompts whose continuations are the same
    tokens_agreeing: float          # tokens before each first divergence / all (longer side) tokens
    first_divergence: dict | None   # {prompt, position, lorakit, llama} of the first mismatch

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> Agreement:
    same, agree, total, first = 0, 0, 0, None
    for i, (a, b) in enumerate(zip(ours, theirs)):
        same += a == b
        n = max(len(a), len(b))
        pos = next((j for j in range(n) if j >= len(a) or j >= len(b) or a[j] != b[j]), None)
        agree += n if pos is None else pos
        total += n
        if pos is not None and first is None:
            first = {"prompt": i, "position": pos,
                     "lorakit": a[pos] if pos < len(a) else "<end>",
                     "llama": b[pos] if pos < len(b) else "<end>"}
    return Agreement(len(ours), same, agree / total if total else 1.0, first)


def chat_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of single-turn chats, rendered by the tokenizer's chat template."""
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": t}],
                                               add_generation_prompt=True, tokenize=True,
                                               return_dict=False))
            for t in texts]
