"""The model builder: a byte-level BPE tokenizer with the chat template, Llama models in named
sizes, and loading from a directory or (where there is a network) a hub id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from controller.pipeline import chat
from controller.pipeline.events import ListEvents
from controller.pipeline.modelkit import (
    SIZES,
    LlamaSize,
    ModelError,
    build_model,
    count_params,
    dir_size,
    load_model,
    read_meta,
    resolve_device,
    resolve_size,
    train_tokenizer,
)
from controller.pipeline.modelkit.llama import llama_config
from controller.pipeline.task import ALL_INTENTS, generate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer_2048(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = generate("train", 3000, intents=ALL_INTENTS)
    return train_tokenizer([chat.full_text(r["prompt"], r["answer"]) for r in rows],
                           tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=2048)


@pytest.fixture(scope="module")
def tiny_model(tokenizer_2048: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model("tiny", tokenizer_2048, tmp_path_factory.mktemp("models") / "tiny", seed=0)


def test_tokenizer_round_trips_text_and_carries_the_chat_template(tokenizer_2048: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(tokenizer_2048)
    assert isinstance(tok, PreTrainedTokenizerFast)
    # At most the size asked for: the task's text has fewer than 2048 merges to learn, as no merge
    # ever joins a digit to anything (one token per digit).
    assert 300 < len(tok) <= 2048
    assert tok.tokenize("Where is my order #12345?")[-6:] == ["1", "2", "3", "4", "5", "?"]
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == (chat.END, chat.PAD, chat.BOS)
    for prompt in ("Where is my order #12345?", "Ünïcödé ✓ and  two  spaces\nnew line", "x"):
        rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        assert rendered == chat.prompt_text(prompt)
        text = chat.full_text(prompt, "On Monday we are open 9am to 6pm.")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert ids[-1] == tok.eos_token_id  # END is one token, not spelled out
    assert tok.convert_tokens_to_ids(list(chat.SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]


def test_task_examples_stay_short_at_the_demo_vocabulary(tokenizer_2048: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_2048)
    for row in generate("test", 300, intents=ALL_INTENTS):
        assert len(tok(row["prompt"])["input_ids"]) < 40
        assert len(tok(row["answer"])["input_ids"]) < 40


def _params(size: str, tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer, LlamaForCausalLM

    config = llama_config(SIZES[size], AutoTokenizer.from_pretrained(tokenizer_dir))
    with torch.device("meta"):  # shapes only: no memory, no init time
        return count_params(LlamaForCausalLM(config))


def test_sizes_keep_the_student_within_a_fifth_of_the_teacher(tokenizer_2048: Path) -> None:
    teacher, student, tiny = (_params(s, tokenizer_2048) for s in ("teacher", "student", "tiny"))
    assert 4_000_000 <= teacher <= 8_000_000
    assert student <= 0.20 * teacher
    assert tiny < 300_000


def test_a_built_model_loads_with_its_tokenizer_and_metadata(tiny_model: Path) -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "slmops.json"):
        assert (tiny_model / name).is_file(), name
    events = ListEvents()
    model, tok = load_model(tiny_model, device="auto", events=events)
    meta = read_meta(tiny_model)
    assert meta["kind"] == "base" and meta["size"] == "tiny" and meta["base"] is None
    assert meta["params"] == count_params(model)
    assert not model.training
    assert not model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    if not torch.cuda.is_available():
        assert {"type": "log", "message": "no GPU: running on the CPU"} in events.items
    assert dir_size(tiny_model) > (tiny_model / "model.safetensors").stat().st_size
    assert not [p.name for p in tiny_model.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_building_is_seeded(tokenizer_2048: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_model("tiny", tokenizer_2048, tmp_path / "a", seed=1) / "model.safetensors")
    b = load_file(build_model("tiny", tokenizer_2048, tmp_path / "b", seed=1) / "model.safetensors")
    c = load_file(build_model("tiny", tokenizer_2048, tmp_path / "c", seed=2) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_size_mapping_overrides_a_named_size(tokenizer_2048: Path, tmp_path: Path) -> None:
    out = build_model({"base": "tiny", "num_layers": 1}, tokenizer_2048, tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert read_meta(out)["size"] == {"base": "tiny", "num_layers": 1}


@pytest.mark.parametrize("size, message", [
    ("huge", "unknown model size 'huge'; known sizes: teacher, student, tiny"),
    ({"base": "tiny", "layers": 3}, "unknown field(s) layers"),
    ({"base": 5, "num_layers": 1}, "base must be a named size (teacher, student, tiny), got 5"),
    ({"hidden_size": 64}, "missing field(s) intermediate_size, num_heads, num_kv_heads, num_layers"),
    ({"base": "tiny", "num_heads": 5}, "hidden_size 48 is not divisible by num_heads 5"),
    ({"base": "tiny", "num_kv_heads": 2}, "num_heads 3 is not divisible by num_kv_heads 2"),
    ({"base": "tiny", "num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"base": "tiny", "hidden_size": 48, "num_heads": 2, "num_kv_heads": 2}, "must be a multiple of 16"),
])
def test_bad_sizes_are_rejected_naming_the_field(size: object, message: str) -> None:
    with pytest.raises(ModelError) as e:
        resolve_size(size)  # type: ignore[arg-type]  # bad input on purpose
    assert message in str(e.value)


def test_sizes_are_llama_sizes() -> None:
    assert all(isinstance(s, LlamaSize) for s in SIZES.values())


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "model path {d}/missing does not exist"),
    (lambda d: _touch(d / "file"), "model path {d}/file is not a directory"),
    (lambda d: _mkdir(d / "empty"), "model path {d}/empty has no config.json"),
])
def test_load_model_names_a_bad_path(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    ref = make(tmp_path)
    with pytest.raises(ModelError) as e:
        load_model(ref)
    assert message.format(d=tmp_path) in str(e.value)


def test_a_relative_path_that_does_not_exist_is_not_sent_to_the_hub() -> None:
    with pytest.raises(ModelError, match=r"model path no/such/dir does not exist"):
        load_model("./no/such/dir")


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_a_hub_id_offline_fails_with_a_clear_error() -> None:
    # The real hub code path, in a child told it is offline (huggingface_hub reads HF_HUB_OFFLINE at
    # import); online it would retry DNS for a minute before failing the same way.
    code = ("from controller.pipeline.modelkit import load_model, ModelError\n"
            "try:\n    load_model('slmops-test/no-such-model')\n"
            "except ModelError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith("could not load 'slmops-test/no-such-model' from the Hugging Face hub: ")
    assert message.endswith("; check the id and the network, or import the model with `slmops models "
                            "import` and use registry:NAME")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine with no GPU")
def test_auto_falls_back_to_the_cpu_and_cuda_is_refused_without_a_gpu() -> None:
    events = ListEvents()
    assert resolve_device("auto", events) == "cpu"
    assert events.items == [{"type": "log", "message": "no GPU: running on the CPU"}]
    with pytest.raises(ModelError, match="'cuda' was asked for but CUDA is not available"):
        resolve_device("cuda")


def test_an_unknown_device_is_rejected() -> None:
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("vocab_size, texts, message", [
    (100, ["abc"], "vocab_size must be an integer >= 261"),
    (512, [], "needs at least one non-empty text"),
])
def test_train_tokenizer_rejects_bad_input(tmp_path: Path, vocab_size: int, texts: list[str],
                                           message: str) -> None:
    with pytest.raises(ModelError, match=message):
        train_tokenizer(texts, tmp_path / "tok", vocab_size=vocab_size)
    assert not (tmp_path / "tok").exists()
