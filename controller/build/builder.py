"""Build one variant directory from a model directory (Hugging Face layout) for one profile.

The route follows the architecture in the model's ``config.json``:

- one onnxruntime-genai's model builder knows (Llama, Mistral, Phi, Qwen, Gemma, ...): the
  builder makes int4, fp16 and fp32 directly (``-p``, ``-e cpu|cuda``, the profile's block size
  and accuracy level); int8 is the builder's fp32 quantized by onnxruntime with the profile's
  preset (quantize.dynamic_int8). The variant runs on onnxruntime-genai, as the agent does;
- any other: optimum-onnx's export and onnxruntime's quantizers (optimum_export.py), a variant
  for a plain onnxruntime decode loop.

An fp32 build that several profiles start from is made once per ``scratch`` directory. Every
directory appears complete or not at all (written under a temporary name, then renamed), with
``slmops-variant.json`` saying how it was built; check.py and gates.py add what it measured.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.build import adapters, quantize
from controller.build.genai_builder import (
    GENAI_ARCHITECTURES,
    BuildError,
    builder_options,
    genai_version,
    run_genai_builder,
)
from controller.build.optimum_export import export_onnx, optimum_version
from controller.build.profiles import DeviceProfile
from controller.pipeline.events import Events
from controller.pipeline.jsonl import write_atomic
from controller.pipeline.modelkit.files import replace_dir, temp_dir_beside

VARIANT_META = "slmops-variant.json"
RUNTIME_GENAI = "onnxruntime-genai"
RUNTIME_ORT = "onnxruntime"
ROUTE_GENAI, ROUTE_OPTIMUM = "onnxruntime-genai", "optimum-onnx"


@dataclass(frozen=True)
class BuiltVariant:
    dir: Path
    profile: str
    precision: str
    provider: str
    runtime: str  # what serves it: onnxruntime-genai, or a plain onnxruntime loop
    build: dict[str, Any] = field(default_factory=dict)  # route, tool, version, options, seconds


def model_config(model_dir: Path) -> dict[str, Any]:
    """The model's config.json; BuildError says what is wrong with the directory."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise BuildError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise BuildError(f"{model_dir} is not a directory; expected a Hugging Face model directory")
    if (model_dir / "adapter_config.json").is_file():
        raise BuildError(f"{model_dir} is a LoRA adapter; build its merged model instead (finetune "
                         "with merge: true, or merge it into its base and register that)")
    path = model_dir / "config.json"
    if not path.is_file():
        raise BuildError(f"{model_dir} has no config.json; expected a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"{path}: can't read it as JSON ({e})") from None
    if not isinstance(config, dict):
        raise BuildError(f"{path}: expected a JSON object")
    return config


def architecture(config: dict[str, Any]) -> str:
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise BuildError("config.json names no architectures (e.g. [\"LlamaForCausalLM\"]); can't tell "
                         "which builder makes this model")
    return archs[0]


def route_for(model_dir: Path) -> str:
    """ROUTE_GENAI for an architecture the genai model builder knows, else ROUTE_OPTIMUM."""
    return ROUTE_GENAI if architecture(model_config(model_dir)) in GENAI_ARCHITECTURES else ROUTE_OPTIMUM


def build_variant(model_dir: Path, profile: DeviceProfile, out_dir: Path, *, scratch: Path,
                  events: Events | None = None, base_dir: Path | None = None) -> BuiltVariant:
    """``model_dir`` built for ``profile`` into ``out_dir`` (replaced if it exists). A LoRA
    adapter (``model_dir`` with adapter_config.json) needs its base in ``base_dir``: on the CPU
    at fp32 and int8 it becomes the base's graph plus an adapter file (controller/build/
    adapters.py); otherwise it is merged into its base first."""
    events = events or Events()
    model_dir, out_dir, scratch = Path(model_dir), Path(out_dir), Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if (model_dir / "adapter_config.json").is_file():
        if base_dir is None:
            raise BuildError(f"{model_dir} is a LoRA adapter; give its base model to build it")
        merge_reason = adapters.adapter_route(profile.precision, profile.build.provider, model_dir)
        if not merge_reason and architecture(model_config(base_dir)) in GENAI_ARCHITECTURES:
            built = _genai_adapter(Path(base_dir), model_dir, profile, out_dir, scratch, events)
            built.build["architecture"] = architecture(model_config(base_dir))
            write_meta(out_dir, {"profile": profile.name, "precision": profile.precision,
                                 "provider": profile.build.provider, "runtime": built.runtime,
                                 "build": built.build, "adapter": adapters.ADAPTER_FILE})
            return built
        events.log(f"{profile.name}: {merge_reason or 'the base is not a genai builder architecture'}")
        model_dir = merged_model(Path(base_dir), model_dir, scratch, events)
        extra = {"adapter": f"merged into its base ({merge_reason or 'optimum route'}): this variant "
                            "carries the whole model"}
    config = model_config(model_dir)
    arch = architecture(config)
    if profile.precision == "int4":
        block = quantize.fit_block_size(config, profile.build.block_size)
        if block != profile.build.block_size:
            events.log(f"{profile.name}: int4 block size {block} instead of {profile.build.block_size}: "
                       f"{profile.build.block_size} does not divide the model's widths")
            extra["block_size_fitted"] = (f"{block} (the profile asks {profile.build.block_size}; "
                                          "it does not divide the model's widths)")
            profile = dataclasses.replace(profile, build=dataclasses.replace(profile.build, block_size=block))
    if arch in GENAI_ARCHITECTURES:
        built = _genai(model_dir, profile, out_dir, scratch, events)
    else:
        events.log(f"{arch} is not one of the onnxruntime-genai model builder's architectures; "
                   "exporting it with optimum-onnx for a plain onnxruntime runtime")
        built = _optimum(model_dir, profile, out_dir, scratch, events)
    built.build.update(architecture=arch, **extra)
    write_meta(out_dir, {"profile": profile.name, "precision": profile.precision,
                         "provider": profile.build.provider, "runtime": built.runtime, "build": built.build})
    return built


def merged_model(base_dir: Path, adapter_dir: Path, scratch: Path, events: Events) -> Path:
    """The adapter merged into its base, under ``scratch`` (made once)."""
    from controller.pipeline.train.lora import merge_adapter

    merged = scratch / "merged"
    if not (merged / "config.json").is_file():
        events.log(f"merging the adapter into its base {base_dir}")
        merge_adapter(base_dir, adapter_dir, merged)
    return merged


def _genai_adapter(base_dir: Path, adapter_dir: Path, profile: DeviceProfile, out_dir: Path,
                   scratch: Path, events: Events) -> BuiltVariant:
    """The base's graph with LoRA inputs, and the adapter file beside it (fp32, or int8)."""
    b = profile.build
    lora = scratch / "genai-lora"
    if not (lora / adapters.ADAPTER_FILE).is_file():
        adapters.build_lora_fp32(base_dir, adapter_dir, lora, scratch, events)
    options = {**builder_options("fp32", 0, 0), "precision": "fp32", "provider": "cpu",
               "adapter_path": "the adapter"}
    build: dict[str, Any] = {"route": ROUTE_GENAI, "options": options, "adapter": adapters.ADAPTER_FILE,
                             "tool": f"onnxruntime-genai {genai_version()} model builder"}
    tmp = temp_dir_beside(out_dir)
    try:
        shutil.rmtree(tmp)
        if b.precision == "int8":
            build["quantization"] = quantize.dynamic_int8(lora, tmp, b.int8_scheme)
            shutil.copy2(lora / adapters.ADAPTER_FILE, tmp / adapters.ADAPTER_FILE)
        else:
            shutil.copytree(lora, tmp)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuiltVariant(out_dir, profile.name, b.precision, b.provider, RUNTIME_GENAI, build)


def _genai(model_dir: Path, profile: DeviceProfile, out_dir: Path, scratch: Path,
           events: Events) -> BuiltVariant:
    b = profile.build
    tool = {"route": ROUTE_GENAI, "tool": f"onnxruntime-genai {genai_version()} model builder"}
    build: dict[str, Any]
    if b.precision == "int8":
        base = _genai_fp32(model_dir, scratch, events)
        tmp = temp_dir_beside(out_dir)
        try:
            shutil.rmtree(tmp)
            options = quantize.dynamic_int8(base, tmp, b.int8_scheme)
            replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        build = {**tool, "precision_from": "fp32", "options": {**builder_options("fp32", 0, 0),
                                                                "precision": "fp32", "provider": "cpu"},
                 "quantization": options}
    elif b.precision == "fp32" and b.provider == "cpu":
        base = _genai_fp32(model_dir, scratch, events)
        _copy_dir(base, out_dir)
        build = {**tool, "options": {**builder_options("fp32", 0, 0), "precision": "fp32", "provider": "cpu"}}
    else:
        options = builder_options(b.precision, b.block_size, b.accuracy_level)
        events.log(f"building {profile.name}: genai model builder -p {b.precision} -e {b.provider}")
        seconds = run_genai_builder(model_dir, out_dir, precision=b.precision, provider=b.provider,
                                    extra_options=options, events=events)
        build = {**tool, "options": {**options, "precision": b.precision, "provider": b.provider},
                 "seconds": round(seconds, 2)}
    return BuiltVariant(out_dir, profile.name, b.precision, b.provider, RUNTIME_GENAI, build)


def _genai_fp32(model_dir: Path, scratch: Path, events: Events) -> Path:
    base = scratch / "genai-fp32"
    if not (base / "genai_config.json").is_file():
        events.log("building the fp32 base with the genai model builder (-p fp32 -e cpu)")
        run_genai_builder(model_dir, base, precision="fp32", provider="cpu",
                          extra_options=builder_options("fp32", 0, 0), events=events)
    return base


def _optimum(model_dir: Path, profile: DeviceProfile, out_dir: Path, scratch: Path,
             events: Events) -> BuiltVariant:
    b = profile.build
    base = scratch / "optimum-fp32"
    if not (base / "model.onnx").is_file():
        events.log("exporting the fp32 ONNX decoder with optimum-onnx (text-generation-with-past)")
        export_onnx(model_dir, base, events=events)
    build: dict[str, Any] = {"route": ROUTE_OPTIMUM, "tool": optimum_version(),
                             "options": {"task": "text-generation-with-past", "precision": b.precision,
                                         "provider": b.provider}}
    if b.precision == "fp32":
        _copy_dir(base, out_dir)
    else:
        tmp = temp_dir_beside(out_dir)
        try:
            shutil.rmtree(tmp)
            if b.precision == "int8":
                build["quantization"] = quantize.dynamic_int8(base, tmp, b.int8_scheme)
            elif b.precision == "int4":
                build["quantization"] = quantize.int4_weights(base, tmp, b.block_size, b.accuracy_level)
            else:
                build["quantization"] = quantize.fp16(base, tmp)
            replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return BuiltVariant(out_dir, profile.name, b.precision, b.provider, RUNTIME_ORT, build)


def _copy_dir(src: Path, dest: Path) -> None:
    """A copy of ``src`` appears at ``dest``. Copied, not hard-linked: onnx refuses to load
    external weights from a file with several links (it guards against hard-link attacks)."""
    tmp = temp_dir_beside(dest)
    try:
        shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(variant_dir: Path) -> dict[str, Any]:
    path = Path(variant_dir) / VARIANT_META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise BuildError(f"{path}: not JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def write_meta(variant_dir: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the variant's slmops-variant.json (written atomically)."""
    meta = {**read_meta(variant_dir), **updates}
    write_atomic(Path(variant_dir) / VARIANT_META,
                 (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return meta
