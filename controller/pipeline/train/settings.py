"""Training settings: plain dataclasses, validated on construction with errors that name the
field and the bad value. Light: no torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass


class TrainError(ValueError):
    """Training can't start or go on; the message says why and what to do."""


def _check(owner: str, name: str, value: object, ok: bool, want: str) -> None:
    if not ok:
        raise TrainError(f"{owner}.{name} must be {want}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


@dataclass
class TrainSettings:
    learning_rate: float = 3e-3
    """Peak learning rate of AdamW (reached after warmup, then decayed linearly to 0)."""
    batch_size: int = 32
    """Examples per step on each process."""
    epochs: float = 1.0
    """Passes over the examples; ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps to take; 0 = as many as ``epochs`` needs."""
    max_length: int = 128
    """Tokens per example (the rendered conversation); longer ones are cut from the left,
    keeping their last trained assistant turn whole (one that can't be kept is refused)."""
    seed: int = 0
    """Seeds the data order, LoRA initialisation and dropout."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent ramping the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    checkpoint_every: int = 200
    """Steps between checkpoints in work_dir (0 = only at the end)."""
    log_every: int = 10
    """Steps between progress events."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = no clipping)."""

    def __post_init__(self) -> None:
        o = "train"
        _check(o, "learning_rate", self.learning_rate,
               _is_num(self.learning_rate) and 0 < self.learning_rate <= 1, "a number in (0, 1]")
        _check(o, "batch_size", self.batch_size, _is_int(self.batch_size) and self.batch_size >= 1,
               "an integer >= 1")
        _check(o, "epochs", self.epochs, _is_num(self.epochs) and self.epochs > 0, "a number > 0")
        _check(o, "max_steps", self.max_steps, _is_int(self.max_steps) and self.max_steps >= 0,
               "an integer >= 0")
        _check(o, "max_length", self.max_length, _is_int(self.max_length) and self.max_length >= 8,
               "an integer >= 8")
        _check(o, "seed", self.seed, _is_int(self.seed) and self.seed >= 0, "an integer >= 0")
        _check(o, "warmup_ratio", self.warmup_ratio,
               _is_num(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "a number in [0, 1)")
        _check(o, "weight_decay", self.weight_decay,
               _is_num(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        _check(o, "checkpoint_every", self.checkpoint_every,
               _is_int(self.checkpoint_every) and self.checkpoint_every >= 0, "an integer >= 0")
        _check(o, "log_every", self.log_every, _is_int(self.log_every) and self.log_every >= 1,
               "an integer >= 1")
        _check(o, "max_grad_norm", self.max_grad_norm,
               _is_num(self.max_grad_norm) and self.max_grad_norm >= 0, "a number >= 0")


@dataclass
class KDSettings:
    """Logit-level distillation: loss = alpha * T^2 * KL(teacher_T || student_T) + (1-alpha) * CE,
    both on the answer tokens only."""

    temperature: float = 2.0
    """Softening temperature T of both distributions."""
    alpha: float = 0.5
    """Weight of the KL term; 1 - alpha weighs the cross-entropy on the labels."""

    def __post_init__(self) -> None:
        _check("kd", "temperature", self.temperature,
               _is_num(self.temperature) and self.temperature > 0, "a number > 0")
        _check("kd", "alpha", self.alpha, _is_num(self.alpha) and 0 <= self.alpha <= 1,
               "a number in [0, 1]")


DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """A LoRA adapter on the named linear modules; the base model stays frozen."""

    r: int = 8
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Names (last dotted part) of the linear modules to adapt."""
    qlora: bool = False
    """Load the base in 4 bits (bitsandbytes, CUDA only) and train the adapter on top."""

    def __post_init__(self) -> None:
        _check("lora", "r", self.r, _is_int(self.r) and self.r >= 1, "an integer >= 1")
        _check("lora", "alpha", self.alpha, _is_num(self.alpha) and self.alpha > 0, "a number > 0")
        _check("lora", "dropout", self.dropout, _is_num(self.dropout) and 0 <= self.dropout < 1,
               "a number in [0, 1)")
        if isinstance(self.target_modules, str) or not isinstance(self.target_modules, (list, tuple)):
            raise TrainError(f"lora.target_modules must be a list of module names, got "
                             f"{self.target_modules!r}")
        self.target_modules = tuple(self.target_modules)
        _check("lora", "target_modules", self.target_modules,
               bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
               "a non-empty list of non-empty names")
        _check("lora", "qlora", self.qlora, isinstance(self.qlora, bool), "true or false")


@dataclass
class TrainResult:
    steps: int
    """The step training ended at (the total)."""
    final_loss: float
    """Mean loss over the last logging window (nan if no step ran in this call)."""
    seconds: float
    """Wall time of this call."""
    resumed_from_step: int
    """0 for a fresh start, else the step of the checkpoint it resumed from."""
    examples: int
    """Examples trained on."""
    trained_tokens: int = 0
    """Tokens the loss was taken on over all the steps (assistant turns only)."""
