"""A smaller student initialised from its teacher: the same architecture and tokenizer, a subset
of the teacher's decoder layers, every other weight (embeddings, final norm, output matrix)
copied. Distillation then starts from the teacher's knowledge rather than from noise (the
DistilBERT recipe, applied to decoder-only models; the choice of layers is the caller's).

Works for the decoder-only models whose layers sit at ``model.layers.N`` (Llama, Mistral,
Qwen2, Phi-3, Gemma): the layer index is in the weight names and in per-layer config lists
(``layer_types``), and both are renumbered here. No library does this for causal LMs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import ModelError, replace_dir, temp_dir_beside

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Config entries that hold one value per layer.
_PER_LAYER = ("layer_types", "sliding_window_pattern_list")


def every_kth(num_layers: int, k: int) -> list[int]:
    """Layers 0, k, 2k, ... and always the last one (it shapes the output the most)."""
    if k < 1:
        raise ModelError(f"keep_every must be at least 1, got {k}")
    keep = list(range(0, num_layers, k))
    if keep[-1] != num_layers - 1:
        keep.append(num_layers - 1)
    return keep


def check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    keep = sorted(set(layers))
    if not keep:
        raise ModelError("layers: name at least one of the teacher's layers to keep")
    bad = [i for i in keep if not 0 <= i < num_layers]
    if bad:
        raise ModelError(f"layers: {bad} are not layers of the teacher (it has {num_layers}: "
                         f"0..{num_layers - 1})")
    return keep


def shrink(model: Any, tokenizer: Any, layers: Sequence[int], out: Path) -> dict[str, Any]:
    """Write a model of ``model``'s architecture with only ``layers`` (teacher indices, in order)
    and ``tokenizer`` into ``out``; returns what was kept, for the lineage."""
    from transformers import AutoModelForCausalLM

    config = model.config
    total = int(config.num_hidden_layers)
    keep = check_layers(layers, total)
    state = model.state_dict()
    if not any(_LAYER.match(k) for k in state):
        raise ModelError(f"{type(model).__name__}: its decoder layers are not at model.layers.N; "
                         "a student can't be cut from it (use init_model with tokenizer_model)")
    new_index = {old: new for new, old in enumerate(keep)}
    small_state = {}
    for key, tensor in state.items():
        match = _LAYER.match(key)
        if match is None:
            small_state[key] = tensor
        elif int(match.group(1)) in new_index:
            small_state[f"model.layers.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    small_config = config.__class__.from_dict(config.to_dict())
    small_config.num_hidden_layers = len(keep)
    for name in _PER_LAYER:
        values = getattr(small_config, name, None)
        if isinstance(values, list) and len(values) == total:
            setattr(small_config, name, [values[i] for i in keep])
    student = AutoModelForCausalLM.from_config(small_config)
    missing, unexpected = student.load_state_dict(small_state, strict=False)
    # A tied output matrix is the embedding: absent from the state dict under its own name.
    missing = [k for k in missing if not (k == "lm_head.weight" and small_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"the student's weights don't line up with the teacher's: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    if small_config.tie_word_embeddings:
        student.tie_weights()
    tmp = temp_dir_beside(out)
    student.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    kept = {"teacher_layers": total, "kept_layers": keep,
            "teacher_params": sum(p.numel() for p in model.parameters()),
            "student_params": sum(p.numel() for p in student.parameters())}
    (tmp / "slmops-shrink.json").write_text(json.dumps(kept) + "\n")
    replace_dir(tmp, out)
    return kept
