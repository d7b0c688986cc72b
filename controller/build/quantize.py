"""onnxruntime's quantizers on an fp32 ONNX model directory, for the precisions a route can't
build directly:

- ``dynamic_int8``: optimum's ``ORTQuantizer`` with the ``AutoQuantizationConfig`` preset of the
  profile's instruction set (avx2, avx512_vnni, arm64), dynamic, per channel: MatMulInteger with
  weights quantized ahead and activations at run time (QOperator format, the fast one on CPU);
- ``int4_weights``: ``MatMulNBitsQuantizer`` (block-wise int4 weights, symmetric);
- ``fp16``: ``convert_float_to_float16(keep_io_types=True)``.

Each reads ``src_dir/MODEL``, copies every other file of ``src_dir`` (tokenizer, configs) and
writes ``out_dir/MODEL`` with its weights in ``MODEL.data``, the layout onnxruntime-genai
expects. ``out_dir`` must not exist yet (the caller renames it into place).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from controller.build.genai_builder import BuildError

MODEL = "model.onnx"
SCHEMES = ("avx2", "avx512_vnni", "arm64")


def _copy_others(src_dir: Path, out_dir: Path, model_file: str) -> None:
    skip = {model_file, model_file + ".data", model_file + "_data"}
    shutil.copytree(src_dir, out_dir, ignore=lambda _d, names: [n for n in names if n in skip])


def _save(model: Any, out_dir: Path, model_file: str) -> None:
    import onnx

    onnx.save_model(model, str(out_dir / model_file), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=model_file + ".data", size_threshold=0)


def dynamic_int8(src_dir: Path, out_dir: Path, scheme: str, model_file: str = MODEL) -> dict[str, Any]:
    """Dynamic int8 with the preset ``scheme``; the options used."""
    import onnx
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import PretrainedConfig

    if scheme not in SCHEMES:
        raise BuildError(f"int8_scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    config = getattr(AutoQuantizationConfig, scheme)(is_static=False, per_channel=True)
    scratch = Path(tempfile.mkdtemp(prefix="int8-", dir=Path(out_dir).parent))
    try:
        # A config is given so the quantizer does not look for config.json beside the model.
        quantizer = ORTQuantizer(Path(src_dir) / model_file, config=PretrainedConfig())
        quantizer.quantize(config, scratch, file_suffix="int8", use_external_data_format=True)
        quantized = onnx.load(str(scratch / f"{Path(model_file).stem}_int8.onnx"))
        _copy_others(Path(src_dir), Path(out_dir), model_file)
        _save(quantized, Path(out_dir), model_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"quantizer": "optimum ORTQuantizer (onnxruntime dynamic)", "preset": f"AutoQuantizationConfig."
            f"{scheme}(is_static=False)", "per_channel": True,
            "operators": list(config.operators_to_quantize),
            "weights": str(config.weights_dtype.name), "activations": str(config.activations_dtype.name)}


def fit_block_size(config: dict[str, Any], block_size: int) -> int:
    """The largest block size up to ``block_size`` (16 at least) that divides every matrix's
    input width (hidden, intermediate, attention heads x head dim). A block that does not divide
    it is padded, and SmolLM2 (width 576) at block 128 loses its answers after a few tokens."""
    hidden = int(config.get("hidden_size") or 0)
    heads = int(config.get("num_attention_heads") or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    widths = [w for w in (hidden, int(config.get("intermediate_size") or 0), heads * head_dim) if w]
    block = block_size
    while block > 16 and any(w % block for w in widths):
        block //= 2
    return block


def int4_weights(src_dir: Path, out_dir: Path, block_size: int, accuracy_level: int,
                 model_file: str = MODEL) -> dict[str, Any]:
    """Block-wise int4 weights (MatMulNBits); the options used."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(Path(src_dir) / model_file))
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None)
    quantizer.process()
    _copy_others(Path(src_dir), Path(out_dir), model_file)
    _save(quantizer.model.model, Path(out_dir), model_file)
    return {"quantizer": "onnxruntime MatMulNBitsQuantizer", "bits": 4, "block_size": block_size,
            "accuracy_level": accuracy_level, "symmetric": True}


def fp16(src_dir: Path, out_dir: Path, model_file: str = MODEL) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs and outputs; the options used."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(Path(src_dir) / model_file)), keep_io_types=True)
    _copy_others(Path(src_dir), Path(out_dir), model_file)
    _save(model, Path(out_dir), model_file)
    return {"converter": "onnxruntime convert_float_to_float16", "keep_io_types": True}
