"""Tiny random models for fast tests: Llama-style, GPT-2-style (Conv1D), BERT-style
(sequence classification) and a conv net. Each comes with a matching input batch."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 128


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64))


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=128,
                                                    max_position_embeddings=64, num_labels=3))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.seq = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = self.seq(h.flatten(2))
        return self.head(h.mean(-1))


def convnet():
    return ConvNet()


MODELS = {"llama": llama, "gpt2": gpt2, "bert": bert, "convnet": convnet}


def make(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[kind]().eval()
    return model


def batch(kind: str, rows: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "convnet":
        return torch.randn(rows, 3, 6, 6, generator=g)
    return torch.randint(0, VOCAB, (rows, 8), generator=g)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits
