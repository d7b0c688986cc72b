"""LoRA with peft: check the target modules exist, wrap the model, save the adapter alone, and
merge an adapter into its base on request. QLoRA (a 4-bit base) where CUDA and bitsandbytes
are present, a clear error where they are not."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import replace_dir, temp_dir_beside, write_meta
from controller.pipeline.train.settings import LoraSettings, TrainError


def linear_module_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers (what target_modules refer to)."""
    import torch.nn as nn

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and name})


def check_targets(model: Any, lora: LoraSettings) -> None:
    """TrainError listing the linear modules that do exist when a target module doesn't."""
    existing = linear_module_names(model)
    missing = [name for name in lora.target_modules if name not in existing]
    if missing:
        raise TrainError(f"lora.target_modules {missing} not found in the model; its linear modules "
                         f"are: {', '.join(existing)}")


def check_qlora_available() -> None:
    """QLoRA needs CUDA and bitsandbytes; say which one is missing."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise TrainError("lora.qlora needs a CUDA GPU and none is available here; set qlora: false "
                         "to train a LoRA adapter on the full-precision base")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("lora.qlora needs the bitsandbytes package, which is not installed; "
                         "pip install bitsandbytes, or set qlora: false")


def load_qlora_base(model_dir: Path | str) -> Any:
    """The base model quantized to 4 bits (NF4) on the GPU, prepared for adapter training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_qlora_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, device_map={"": 0})
    return prepare_model_for_kbit_training(model)


def wrap(model: Any, lora: LoraSettings, base_ref: str) -> Any:
    """``model`` with LoRA adapters on ``lora.target_modules``; only they require grad."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, lora)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM", bias="none")
    model.name_or_path = base_ref
    model.config.name_or_path = base_ref  # peft records it as base_model_name_or_path
    return get_peft_model(model, config)


def trainable_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model: Any, out_dir: Path, base_ref: str) -> None:
    """The adapter alone (adapter_config.json + adapter_model.safetensors) into ``out_dir``."""
    model.save_pretrained(out_dir, safe_serialization=True)
    (Path(out_dir) / "README.md").unlink(missing_ok=True)  # peft's model-card stub; not ours
    import json

    config_path = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_ref
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge_adapter(base_dir: Path | str, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the adapter in ``adapter_dir`` into the base in ``base_dir`` (a directory, or a
    hub id as a str) and write the full model (with the base's tokenizer and ``slmops.json``
    kind "finetuned") to ``out_dir``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    checks = [("adapter", adapter_dir, "adapter_config.json")]
    if isinstance(base_dir, Path):  # a hub id is checked by from_pretrained
        checks.insert(0, ("base model", base_dir, "config.json"))
    for label, path, marker in checks:
        if not (path / marker).is_file():
            raise TrainError(f"{label} {path} has no {marker}")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    try:
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise TrainError(f"could not apply adapter {adapter_dir} to {base_dir}: {e}") from e
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, {"kind": "finetuned", "params": sum(p.numel() for p in merged.parameters()),
                         "base": str(base_dir), "adapter": str(adapter_dir), "merged": True})
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
