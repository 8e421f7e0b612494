"""Multi-adapter serving: one base model, many LoRA adapters, one batch (``lorakit serve``).

    slots.py     stacked adapter weights on every linear layer + per-row slot index
    cache.py     adapters read from PEFT directories, LRU in host memory
    registry.py  adapter names -> directories, validated
    kvbatch.py   the running batch's left-padded KV cache
    sampling.py  greedy / temperature / top-p, seeded
    textstream.py  incremental detokenization and stop strings
    engine.py    continuous batching in a background thread
    server.py    the objects one server holds, built from ServeConfig (config.py)
    api.py       OpenAI-compatible HTTP API (FastAPI); cli.py: ``lorakit serve``

Needs the ``serve`` extra (fastapi, uvicorn) for the HTTP part only.
"""
