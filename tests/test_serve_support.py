"""Shared pieces of the serving tests (this module holds no tests): a tiny random Llama with the
real SmolLM2 tokenizer's vocabulary, PEFT adapter directories written by lorakit, offline
``generate`` references, and a live uvicorn server in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from contextlib import contextmanager

import torch

import lorakit
from lorakit.models import load_tokenizer
from lorakit.serve.config import ServeConfig
from lorakit.serve.server import Server

# name -> LoraConfig kwargs: ranks 2..8, attention / MLP / all-linear, rsLoRA, patterns.
ADAPTERS = {
    "alpha": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "beta": dict(r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True),
    "gamma": dict(r=2, lora_alpha=4, target_modules=["down_proj", "o_proj"], alpha_pattern={"o_proj": 8}),
    "delta": dict(r=6, lora_alpha=6, target_modules=["gate_proj", "up_proj"], rank_pattern={"up_proj": 3}),
    "eps": dict(r=8, lora_alpha=32, target_modules=["k_proj"], layers_to_transform=[1]),
    "zeta": dict(r=4, lora_alpha=4, target_modules=r".*\.(q_proj|o_proj|down_proj)"),
    "eta": dict(r=5, lora_alpha=10, target_modules="all-linear"),
    "theta": dict(r=3, lora_alpha=9, target_modules=["v_proj", "up_proj"]),
}


def tiny_model(seed: int = 0):
    """2-layer Llama, hidden 64, SmolLM2's vocabulary (49152). A larger init spread than the
    default keeps greedy outputs varied, so different adapters give visibly different text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def tokenizer():
    return load_tokenizer()


def write_adapters(base, root, specs=ADAPTERS, seed: int = 1) -> None:
    """Save one random (non-zero) adapter per spec as a PEFT directory ``root/<name>``."""
    for i, (name, kw) in enumerate(specs.items()):
        model = copy.deepcopy(base)
        torch.manual_seed(seed + i)
        lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **kw))
        with torch.no_grad():  # make the update large enough to change greedy tokens
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
        lorakit.save_adapter(model, root / name)


class Offline:
    """Reference outputs: ``model.generate`` with one adapter loaded alone (or the base)."""

    def __init__(self, base, tok, root):
        self.base, self.tok, self.root = base, tok, root
        self._models = {}

    def model(self, name):
        if name not in self._models:
            model = copy.deepcopy(self.base)
            if name is not None:
                lorakit.load_adapter(model, self.root / name)
            self._models[name] = model
        return self._models[name]

    def ids(self, name, prompt_ids: list[int], max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = self.model(name).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                            do_sample=False, pad_token_id=self.tok.pad_token_id)
        return out[0, ids.shape[1]:].tolist()

    def text(self, name, prompt: str, max_tokens: int) -> str:
        return self.tok.decode(self.ids(name, self.tok(prompt).input_ids, max_tokens), skip_special_tokens=True)

    def chat(self, name, messages, max_tokens: int) -> str:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tok(text, add_special_tokens=False).input_ids
        return self.tok.decode(self.ids(name, ids, max_tokens), skip_special_tokens=True)


# prompts of the live-server tests' clients
PROMPTS = ["The quick brown fox", "Once upon a time", "1, 2, 3,", "Dear diary, today I", "Hello"]


def adapters_dir(tmp_path_factory):
    """(tiny base model, its tokenizer, a new directory holding the ``ADAPTERS`` for it)."""
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_model()
    write_adapters(base, root)
    return base, tokenizer(), root


def tiny_setup(tmp_path_factory):
    """Body of the serving test modules' ``setup`` fixture: (tiny base model, directory of the
    ``ADAPTERS``), torch on one thread while the module runs."""
    base, _, root = adapters_dir(tmp_path_factory)
    with one_thread():
        yield base, root


@contextmanager
def one_thread():
    """Run torch on one thread: tiny models gain nothing from more, and on a shared, busy
    machine OpenMP's spinning barriers make every small op many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LiveServer:
    """A Server behind uvicorn in a background thread, on a free 127.0.0.1 port."""

    def __init__(self, server: Server):
        from lorakit.serve.cli import make_uvicorn

        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.uvicorn = make_uvicorn(server, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=60)

    def client(self, api_key: str | None = None, **kw):
        from openai import OpenAI

        key = api_key if api_key is not None else (self.server.api_key or "none")
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)


def make_server(base, tok, root, **overrides) -> Server:
    config = ServeConfig(adapters=str(root), dtype="float32", served_model_name="tiny-base", **overrides)
    return Server(config, copy.deepcopy(base), tok)


class LogErrors(logging.Handler):
    """Collects every log record that carries a traceback or is an ERROR, from the root,
    uvicorn's and lorakit's loggers while in use (uvicorn's do not propagate to the root)."""

    NAMES = ("", "uvicorn", "uvicorn.error", "lorakit")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            self.records.append(record)

    def __enter__(self) -> "LogErrors":
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)

    def messages(self, since: int = 0) -> list[str]:
        return [r.getMessage() for r in self.records[since:]]
