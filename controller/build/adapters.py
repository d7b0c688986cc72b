"""A LoRA adapter built as a variant that shares its base's files: base graph + adapter file.

onnxruntime-genai serves a base model with LoRA adapters (``og.Adapters``): the LoRA weights
are inputs of the base graph, fed from an ``.onnx_adapter`` file at run time. The model builder
(``--extra_options adapter_path=``) bakes them into the graph instead, as the initializers of
extra MatMuls (``...q_proj.lora_A.MatMul.weight``). This module builds that graph, then turns
each LoRA initializer into a graph input (its rank a symbolic dimension) and writes the weights
into :data:`ADAPTER_FILE` with onnxruntime's adapter format.

What is left in ``model.onnx`` and ``model.onnx.data`` is the base with LoRA inputs: the same
bytes for every adapter of the same base with the same target modules, so a device that has one
adapter's variant downloads only the next adapter's file (a few KB to MB) for the next version.

int8 variants quantize that base (dynamic int8 leaves MatMuls whose weight is an input alone);
int4 and CUDA fp16 variants of an adapter are built from the merged model instead, as full
variants (the model builder quantizes the LoRA MatMuls with the rest, so nothing is shared).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from controller.build.genai_builder import builder_options, run_genai_builder
from controller.pipeline.events import Events

ADAPTER_FILE = "adapter.onnx_adapter"
GRAPH, WEIGHTS = "model.onnx", "model.onnx.data"
LORA_MARKS = (".lora_A.", ".lora_B.")
RANK_DIM = "lora_rank"


# Modules whose LoRA the model builder (0.12) can't put beside the base: on lm_head it emits a
# graph that onnxruntime refuses to load; embeddings and modules_to_save are whole weights.
UNSUPPORTED_TARGETS = ("lm_head", "embed_tokens")


def adapter_route(precision: str, provider: str, adapter_dir: Path) -> str:
    """"" when a variant of this precision and provider can keep the adapter apart from its
    base; else why it is merged into the base instead."""
    import json

    if provider != "cpu" or precision not in ("fp32", "int8"):
        return f"{precision} on {provider} is built from the merged model"
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    odd = sorted({t for t in targets if any(u in str(t) for u in UNSUPPORTED_TARGETS)})
    if odd or config.get("modules_to_save"):
        return (f"the adapter adapts {', '.join(odd) or 'modules_to_save'}, which onnxruntime-genai's "
                "model builder can't keep apart from the base; built from the merged model")
    return ""


def build_lora_fp32(base_dir: Path, adapter_dir: Path, out_dir: Path, scratch: Path,
                    events: Events) -> dict[str, Any]:
    """``out_dir``: the fp32 base graph with LoRA inputs and :data:`ADAPTER_FILE`; the
    adapter's parameters (names, count)."""
    baked = Path(scratch) / "genai-lora-baked"
    events.log("building the base with the adapter's LoRA MatMuls (genai model builder -p fp32, "
               "adapter_path)")
    run_genai_builder(base_dir, baked, precision="fp32", provider="cpu",
                      extra_options={**builder_options("fp32", 0, 0), "adapter_path": str(adapter_dir)},
                      events=events)
    return extract_adapter(baked, out_dir)


def extract_adapter(baked: Path, out_dir: Path) -> dict[str, Any]:
    """Move the LoRA initializers of the graph in ``baked`` into an adapter file; write the
    rest to ``out_dir`` (with the other files of ``baked``)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from controller.build.genai_builder import BuildError

    model = onnx.load(str(baked / GRAPH))  # with its external weights
    params, kept = {}, []
    for init in model.graph.initializer:
        if any(mark in init.name for mark in LORA_MARKS):
            params[init.name] = numpy_helper.to_array(init)
        else:
            kept.append(init)
    if not params:
        raise BuildError(f"{baked / GRAPH} has no LoRA weights (names with {' or '.join(LORA_MARKS)}); "
                         "is the adapter a LoRA adapter of this base?")
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for name in sorted(params):  # sorted: the same graph for every adapter with these targets
        rows, cols = params[name].shape
        shape = [rows, RANK_DIM] if ".lora_A." in name else [RANK_DIM, cols]
        model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(baked, out_dir, ignore=shutil.ignore_patterns(GRAPH, WEIGHTS))
    onnx.save_model(model, str(out_dir / GRAPH), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=WEIGHTS, size_threshold=0)
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    adapter.export_adapter(str(out_dir / ADAPTER_FILE))
    return {"adapter_file": ADAPTER_FILE, "lora_parameters": len(params),
            "lora_values": int(sum(v.size for v in params.values()))}
