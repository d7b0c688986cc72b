"""Tiny device variants for tests: a Llama trained for a few seconds on the support task, built
into onnxruntime-genai variants (fp32, int4) with the real model builder.

Not a test module. Tests get the variants through a session-scoped fixture of their own:

    @pytest.fixture(scope="session")
    def tiny(tmp_path_factory):
        return variants.tiny_variants(tmp_path_factory)

``tiny_variants`` caches per pytest session (on the TempPathFactory), so every test module that
asks pays for the training and the builds once. Building a variant runs the builder in a
subprocess, as the controller does, so the builder's imports stay out of the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PRECISIONS = ("fp32", "int4")
TRAIN_ROWS, TRAIN_STEPS, BATCH = 400, 100, 16


@dataclass(frozen=True)
class TinyVariants:
    """A trained Hugging Face model dir and its variants, by precision."""

    model_dir: Path
    variants: dict[str, Path]
    test_rows: list[dict]  # support-task rows from the test split

    @property
    def fp32(self) -> Path:
        return self.variants["fp32"]

    @property
    def int4(self) -> Path:
        return self.variants["int4"]


def train_support_model(root: Path, steps: int = TRAIN_STEPS) -> Path:
    """A tiny Llama (modelkit "tiny", 400-token vocabulary) trained for ``steps`` steps on the
    support task: not accurate, but its answers have the task's shape and end with <|end|>."""
    from tinytrain import train_on_answers

    from controller.pipeline import chat
    from controller.pipeline.modelkit import build_model, train_tokenizer
    from controller.pipeline.task import support

    rows = support.generate("train", TRAIN_ROWS, seed=0)
    texts = [chat.full_text(r["prompt"], r["answer"]) for r in rows]
    train_tokenizer(texts, root / "tokenizer", vocab_size=400)
    build_model("tiny", root / "tokenizer", root / "untrained")
    return train_on_answers(root / "untrained", root / "model", [(r["prompt"], r["answer"]) for r in rows],
                            steps=steps, batch=BATCH)


def build_variant(model_dir: Path, out_dir: Path, precision: str) -> Path:
    """Run onnxruntime-genai's model builder on ``model_dir`` (CPU) into ``out_dir``."""
    cache = out_dir.parent / f".cache-{out_dir.name}"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir),
           "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"model builder failed ({precision}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return out_dir


def tiny_variants(factory: pytest.TempPathFactory) -> TinyVariants:
    """The session's TinyVariants, built on first use."""
    cached = getattr(factory, "_slmops_tiny_variants", None)
    if cached is not None:
        return cached
    import torch

    from controller.pipeline.task import support

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = factory.mktemp("tiny-variants")
        model_dir = train_support_model(root)
    finally:
        torch.set_num_threads(threads)
    variants = {p: build_variant(model_dir, root / f"variant-{p}", p) for p in PRECISIONS}
    built = TinyVariants(model_dir, variants, support.generate("test", 10, seed=0))
    factory._slmops_tiny_variants = built  # type: ignore[attr-defined]  # per-session cache
    return built


def golden_rows(variant: Path, rows: list[dict], n: int) -> list[dict[str, str]]:
    """The first ``n`` rows' prompts with ``variant``'s own greedy answers, judged as the
    on-device gate judges them: golden prompts the variant passes."""
    from agent.chat_format import clean_answer
    from agent.engine import Engine
    from agent.engine.answer import greedy_answer

    engine = Engine.load(variant)
    try:
        return [{"prompt": row["prompt"],
                 "answer": clean_answer(greedy_answer(engine, row["prompt"], 64).text)}
                for row in rows[:n]]
    finally:
        engine.close()


def copy_variant(src: Path, dest: Path) -> Path:
    """A copy of a variant directory that a test may damage."""
    import shutil

    shutil.copytree(src, dest)
    return dest


def genai_config(variant: Path) -> dict:
    return json.loads((variant / "genai_config.json").read_text())
