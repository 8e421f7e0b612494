"""The vLLM side of bench/serve_vs_vllm.py; runs inside vLLM's own virtualenv (imports vllm
only, never lorakit).

    <vllm-venv>/bin/python bench/vllm_worker.py SPEC.json

SPEC: {"model": HF dir, "adapters": [PEFT dirs], "max_lora_rank": r, "prompts": [[token ids]],
"new_tokens": n}. The worker builds one offline ``vllm.LLM`` with LoRA enabled (slots for every
adapter), warms it up, prints a ``ready`` line, then answers one line per command read from
stdin: ``{"scenario": "a_base" | "b_one_adapter" | "c_distinct_adapters"}`` -> tokens generated
(up to and including EOS, as lorakit counts them), wall seconds of the ``generate`` call
(prefill included) and each request's generated token ids. Protocol lines start with ``@@ ``
so that vLLM's own prints on stdout cannot be mistaken for them.
"""

from __future__ import annotations

import json
import sys
import time

PREFIX = "@@ "


def say(obj: dict) -> None:
    print(PREFIX + json.dumps(obj), flush=True)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    start = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    n = len(spec["adapters"])
    llm = LLM(model=spec["model"], dtype="bfloat16", enable_lora=True, max_loras=n, max_cpu_loras=n,
              max_lora_rank=spec["max_lora_rank"], max_model_len=spec.get("max_model_len", 512),
              max_num_seqs=len(spec["prompts"]), seed=0)
    loras = [LoRARequest(f"adapter{i}", i + 1, path) for i, path in enumerate(spec["adapters"])]
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=spec["new_tokens"])
    requests = {"a_base": None, "b_one_adapter": [loras[0]] * len(prompts),
                "c_distinct_adapters": [loras[i % n] for i in range(len(prompts))]}
    for lora in (None, requests["c_distinct_adapters"]):  # warm-up: compile, load every adapter
        llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=2), lora_request=lora, use_tqdm=False)
    say({"event": "ready", "startup_s": time.perf_counter() - start, "vllm": vllm.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, lora_request=requests[cmd["scenario"]], use_tqdm=False)
        seconds = time.perf_counter() - t0
        ids = [list(o.outputs[0].token_ids) for o in outs]
        say({"event": "result", "tokens": sum(len(x) for x in ids), "seconds": seconds, "token_ids": ids})


if __name__ == "__main__":
    main()
