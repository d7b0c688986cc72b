"""Training: full fine-tune, LoRA and logit KD on the answer tokens, with checkpoints to resume
from. Importing this package is light; torch, transformers, peft and accelerate load inside
the functions."""

from controller.pipeline.train.kd import check_same_tokenizer
from controller.pipeline.train.loop import train
from controller.pipeline.train.lora import merge_adapter
from controller.pipeline.train.settings import (
    DEFAULT_LORA_TARGETS,
    KDSettings,
    LoraSettings,
    TrainError,
    TrainResult,
    TrainSettings,
)

__all__ = ["DEFAULT_LORA_TARGETS", "KDSettings", "LoraSettings", "TrainError", "TrainResult",
           "TrainSettings", "check_same_tokenizer", "merge_adapter", "train"]
