"""Load a causal LM and its tokenizer from a directory or a Hugging Face hub id, on the
device asked for (falling back to the CPU, and saying so, when there is no GPU)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controller.pipeline.events import Events
from controller.pipeline.modelkit.files import ModelError


def resolve_device(device: str = "auto", events: Events | None = None) -> str:
    """"auto" -> "cuda" when CUDA is available, else "cpu" (logged through ``events``)."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if events is not None:
            events.log("no GPU: running on the CPU")
        return "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} was asked for but CUDA is not available here; "
                             "use device 'auto' or 'cpu'")
        return device
    raise ModelError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(ref: str | Path) -> bool:
    """A Path; a string that exists on disk, starts with '.', '/' or '~', or can't be a hub id
    ("org/name" or "name"). A hub-id-shaped string that doesn't exist locally is a hub id."""
    if isinstance(ref, Path):
        return True
    if ref.startswith((".", "/", "~")) or Path(ref).exists():
        return True
    return HUB_ID.fullmatch(ref) is None or ".." in ref


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_model(ref: str | Path, *, device: str = "auto", events: Events | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a model directory, a LoRA adapter directory (its base is loaded
    from ``adapter_config.json`` and the adapter applied, unmerged) or a hub id. The model is
    in eval mode on the resolved device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device, events)
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelError(f"model path {path} does not exist")
        if not path.is_dir():
            raise ModelError(f"model path {path} is not a directory")
        if is_adapter_dir(path):
            return _load_adapter(path, target, events)
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {path} has no config.json; expected a Hugging Face model "
                             "directory (config.json, model.safetensors, tokenizer files)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load the model in {path}: {e}") from e
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref)
            model = AutoModelForCausalLM.from_pretrained(ref)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"could not load {ref!r} from the Hugging Face hub: {first.rstrip('.')}; "
                             "check the id and the network, or import the model with `slmops models "
                             "import` and use registry:NAME") from e
    if tokenizer.pad_token is None:  # hub models often have none; batched generation needs one
        tokenizer.pad_token = tokenizer.eos_token
    model.to(target)  # type: ignore[arg-type]  # transformers wraps .to with functools.wraps: mistyped
    model.eval()
    return model, tokenizer


def _load_adapter(path: Path, device: str, events: Events | None) -> tuple[Any, Any]:
    import json

    from peft import PeftModel

    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base_ref = config.get("base_model_name_or_path")
    if not base_ref:
        raise ModelError(f"adapter {path}: adapter_config.json names no base_model_name_or_path")
    base, tokenizer = load_model(base_ref, device=device, events=None)
    try:
        model = PeftModel.from_pretrained(base, path)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"could not apply adapter {path} to {base_ref}: {e}") from e
    model.to(device)
    model.eval()
    return model, tokenizer


def count_params(model: Any) -> int:
    """Every parameter of ``model`` (for a peft model: the base's plus the adapter's)."""
    return sum(p.numel() for p in model.parameters())
