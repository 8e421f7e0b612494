"""Supervised fine-tuning (``lorakit train``): LoRA / QLoRA / DoRA or full, one loop.

    from lorakit.train import TrainConfig, train
    train(TrainConfig(data="train.jsonl", output_dir="runs/a"))   # -> runs/a/adapter

See docs/training.md for the config, the data formats and the run directory layout.
"""

from lorakit.train.config import TrainConfig
from lorakit.train.loop import TrainingDiverged, train

__all__ = ["TrainConfig", "TrainingDiverged", "train"]
