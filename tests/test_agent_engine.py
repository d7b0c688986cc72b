"""The agent's engine on real variants: a tiny Llama trained on the support task, built with
onnxruntime-genai's builder (tests/variants.py), run with onnxruntime-genai, compared with the
PyTorch model it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import variants

from agent.engine import (
    Engine,
    EngineClosed,
    ModelSlot,
    NoModel,
    ParamError,
    SamplingParams,
    VariantError,
    check_variant,
)
from agent.engine.pool import Busy, GenerationPool
from agent.engine.stops import StopMatcher
from agent.engine.variant import graph_precision


@pytest.fixture(scope="module")
def engine(tiny: variants.TinyVariants):
    loaded = Engine.load(tiny.fp32)
    yield loaded
    loaded.close()


def params(**kw) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 80, **kw})


def chat_prompt(engine: Engine, prompt: str) -> str:
    return engine.chat_prompt([{"role": "user", "content": prompt}])


# -- the prompt and the answer are the training's, token for token ------------------------------

def test_greedy_output_equals_the_pytorch_models_greedy_output_token_for_token(
        tiny: variants.TinyVariants, engine: Engine) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from controller.pipeline import chat

    tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny.model_dir).eval()
    for row in tiny.test_rows[:6]:
        messages = [{"role": "user", "content": row["prompt"]}]
        prompt = engine.chat_prompt(messages)
        assert prompt == chat.prompt_text(row["prompt"])
        assert prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert engine.encode(prompt) == ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=80, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        expected = out[0, len(ids):].tolist()
        stream = engine.stream(prompt, params())
        text = "".join(piece.text for piece in stream)
        assert stream.token_ids == expected, row["prompt"]
        assert text == tokenizer.decode(expected, skip_special_tokens=True)
        assert stream.finish_reason == "stop" and stream.prompt_tokens == len(ids)


def test_chat_template_renders_multi_turn_conversations_as_transformers_does(
        tiny: variants.TinyVariants, engine: Engine) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "Where is order #12345?\nThanks {{ not a tag }}"}],
        [{"role": "user", "content": "Ünïcödé 漢字"}],
    ]
    for messages in conversations:
        assert engine.chat_prompt(messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    # transformers drops a system message this template has no place for; the engine refuses it
    with pytest.raises(ParamError) as caught:
        engine.chat_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}])
    assert caught.value.field == "messages[0].role"
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "},
                                          {"type": "text", "text": "there"}]}]
    assert engine.chat_prompt(parts) == engine.chat_prompt([{"role": "user", "content": "Hi there"}])


@pytest.mark.parametrize(("messages", "field"), [
    ([], "messages"),
    ("hello", "messages"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content"),
])
def test_bad_chat_messages_are_refused_naming_the_field(engine: Engine, messages, field: str) -> None:
    with pytest.raises(ParamError) as caught:
        engine.chat_prompt(messages)
    assert caught.value.field == field


def test_int4_variant_is_smaller_and_answers(tiny: variants.TinyVariants) -> None:
    fp32, int4 = check_variant(tiny.fp32), check_variant(tiny.int4)
    assert (fp32.precision, int4.precision) == ("fp32", "int4")
    assert int4.files["model.onnx.data"] < fp32.files["model.onnx.data"]
    assert fp32.context_length == 256 and fp32.chat_template and fp32.eos_token_ids == (4,)
    engine = Engine.load(tiny.int4, threads=1)
    try:
        done = engine.complete(chat_prompt(engine, tiny.test_rows[0]["prompt"]), params())
        assert done.text and done.finish_reason in ("stop", "length")
    finally:
        engine.close()


def test_incremental_decoding_keeps_multibyte_characters_whole(engine: Engine) -> None:
    text = "naïve café 漢字 🙂 ok"
    ids = engine.encode(text)
    assert len(ids) > len(text)  # byte-level tokens: some characters span several tokens
    decode = engine.detokenizer()
    pieces = [decode.step(i) for i in ids]
    assert "".join(pieces) == text and decode.flush() == ""
    assert not any("\ufffd" in piece for piece in pieces)


def test_bytes_that_are_not_utf8_decode_as_the_tokenizers_library_does(tiny: variants.TinyVariants,
                                                                       engine: Engine) -> None:
    from tokenizers import Tokenizer

    from agent.engine.detok import _unicode_to_byte

    hf = Tokenizer.from_file(str(tiny.fp32 / "tokenizer.json"))
    stand_in = {byte: char for char, byte in _unicode_to_byte().items()}
    lead, continuation = hf.token_to_id(stand_in[0xE2]), hf.token_to_id(stand_in[0x86])
    letter_o, letter_a = hf.token_to_id("O"), hf.token_to_id("a")
    for ids in ([letter_a, lead, letter_o, letter_a], [continuation, letter_o], [letter_a, lead], [lead, 4]):
        decode = engine.detokenizer()
        streamed = "".join(decode.step(i) for i in ids) + decode.flush()
        assert streamed == engine.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids


def test_sampled_streams_decode_as_the_tokenizers_library_does(tiny: variants.TinyVariants,
                                                                engine: Engine) -> None:
    """Even sampled byte soup (bytes that are not UTF-8) decodes as training's tokenizer does."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tiny.fp32 / "tokenizer.json"))
    prompt = chat_prompt(engine, "Hello! I want 7 shirts. They cost $10 each. What is the total?")
    for seed in range(20):
        stream = engine.stream(prompt, params(temperature=2.0, seed=seed, max_tokens=60))
        text = "".join(piece.text for piece in stream)
        expected = hf.decode(stream.token_ids, skip_special_tokens=True)
        assert text == engine.decode(stream.token_ids) == expected


# -- sampling -------------------------------------------------------------------------------------

def test_same_seed_gives_the_same_sample_and_seeds_differ(engine: Engine) -> None:
    prompt = chat_prompt(engine, "Hi. Are you open on Sunday?")
    first = [engine.complete(prompt, params(temperature=1.5, seed=s)).text for s in range(5)]
    again = [engine.complete(prompt, params(temperature=1.5, seed=s)).text for s in range(5)]
    assert first == again
    assert len(set(first)) > 1


def test_temperature_zero_and_top_k_one_are_greedy(engine: Engine) -> None:
    prompt = chat_prompt(engine, "Where is my order #12345?")
    greedy = engine.complete(prompt, params()).text
    assert engine.complete(prompt, params(temperature=0.0, seed=7)).text == greedy
    assert engine.complete(prompt, params(temperature=1.5, top_k=1, seed=3)).text == greedy
    assert engine.complete(prompt, params(temperature=0.01, seed=3)).text == greedy  # nearly greedy


def test_max_tokens_ends_the_answer_with_finish_reason_length(engine: Engine) -> None:
    done = engine.complete(chat_prompt(engine, "Where is my order #12345?"), params(max_tokens=3))
    assert (done.completion_tokens, done.finish_reason) == (3, "length")
    rest = engine.complete(chat_prompt(engine, "Where is my order #12345?"), params(max_tokens=None))
    assert rest.finish_reason == "stop"


def test_stop_sequences_cut_the_answer_and_never_leak(engine: Engine) -> None:
    prompt = chat_prompt(engine, "Hi. My order #48804 has not arrived. Any news?")
    full = engine.complete(prompt, params()).text
    assert len(full) > 20
    for stop in (full[5:9], full[-6:-2], full[10:11], (full[3:6], full[12:20])):
        stops = stop if isinstance(stop, tuple) else (stop,)
        pieces = list(engine.stream(prompt, params(stop=stops)))
        text = "".join(p.text for p in pieces)
        assert text == full[:min(full.find(s) for s in stops)]
        assert not any(s in text for s in stops)
    done = engine.complete(prompt, params(stop=("never in the answer",)))
    assert (done.text, done.finish_reason) == (full, "stop")


@pytest.mark.parametrize(("stops", "feeds", "expected"), [
    (("END",), ["ab", "cE", "N", "Dzz"], ["ab", "c", "", ""]),  # held back, then cut
    (("END",), ["ab", "cE", "Nx"], ["ab", "c", "ENx"]),  # held back, then released
    (("ab", "b c"), ["xa", "b c"], ["x", ""]),  # earliest match wins
    ((), ["a", "b"], ["a", "b"]),
])
def test_stop_matcher_holds_back_possible_starts(stops, feeds, expected) -> None:
    matcher = StopMatcher(stops)
    assert [matcher.feed(f)[0] for f in feeds] == expected


# -- parameters are checked before anything runs ----------------------------------------------------

@pytest.mark.parametrize(("kw", "field"), [
    ({"max_tokens": 10**9}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
    ({"stop": ("",)}, "stop"),
    ({"seed": -1}, "seed"),
])
def test_bad_sampling_parameters_raise_param_error_naming_the_field(engine: Engine, kw, field) -> None:
    with pytest.raises(ParamError) as caught:
        engine.stream("<|user|>\nhi\n<|assistant|>\n", params(**kw))
    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_prompt_longer_than_the_context_is_refused_naming_the_prompt(engine: Engine) -> None:
    with pytest.raises(ParamError) as caught:
        engine.stream("order 1 " * 300, params(max_tokens=None))
    assert caught.value.field == "prompt" and "256" in str(caught.value)


# -- threads, the pool, swapping models --------------------------------------------------------------

def test_concurrent_generations_give_the_same_answers_as_sequential_ones(
        tiny: variants.TinyVariants, engine: Engine) -> None:
    prompts = [chat_prompt(engine, row["prompt"]) for row in tiny.test_rows[:8]]
    expected = [engine.complete(p, params()).text for p in prompts]
    got: dict[int, str] = {}

    def run(index: int) -> None:
        got[index] = engine.complete(prompts[index], params()).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [got[i] for i in range(len(prompts))] == expected


def test_pool_refuses_beyond_its_queue_and_skips_cancelled_queued_streams(engine: Engine) -> None:
    pool = GenerationPool(workers=1, max_queued=1)
    gate, finished = threading.Event(), []
    prompt = chat_prompt(engine, "Where is my order #12345?")
    first, second = engine.stream(prompt, params()), engine.stream(prompt, params())
    try:
        pool.submit(first, lambda piece: gate.wait(30), lambda error: finished.append(("first", error)))
        pool.submit(second, lambda piece: None, lambda error: finished.append(("second", error)))
        with pytest.raises(Busy):
            pool.submit(engine.stream(prompt, params()), lambda p: None, lambda e: None)
        second.cancel()
        first.cancel()
        gate.set()
    finally:
        pool.shutdown()
    for _ in range(300):
        if len(finished) == 2:
            break
        threading.Event().wait(0.1)
    assert sorted(finished) == [("first", None), ("second", None)]
    assert second.completion_tokens == 0 and second.finish_reason == "cancelled"
    assert first.finish_reason == "cancelled" and pool.running == pool.queued == 0


@pytest.mark.parametrize(("raised", "reported"), [
    (RuntimeError("Event loop is closed"), None),  # the receiver is gone: stop, nothing to report
    (ValueError("a bug in the receiver"), ValueError),  # anything else is the generation's error
])
def test_a_receiver_that_fails_stops_its_generation(engine: Engine, raised: Exception,
                                                    reported: type[Exception] | None) -> None:
    pool = GenerationPool(workers=1, max_queued=0)
    done = threading.Event()
    errors: list[BaseException | None] = []

    def on_piece(piece: object) -> None:
        raise raised

    def on_done(error: BaseException | None) -> None:
        errors.append(error)
        done.set()

    stream = engine.stream(chat_prompt(engine, "Where is my order #12345?"), params())
    try:
        pool.submit(stream, on_piece, on_done)
        assert done.wait(60)
    finally:
        pool.shutdown()
    assert stream.completion_tokens <= 1 and stream.finish_reason == "cancelled"  # its memory freed
    assert (type(errors[0]) if errors[0] is not None else None) is reported


def test_slot_swaps_models_and_a_failed_load_keeps_the_previous_one(
        tiny: variants.TinyVariants, tmp_path: Path) -> None:
    slot = ModelSlot(threads=1)
    with pytest.raises(NoModel):
        slot.get()
    first = slot.load(tiny.fp32, name="support", version="1")
    prompt = chat_prompt(first.engine, "Where is my order #12345?")
    running = first.engine.stream(prompt, params())
    next(running)  # started on the first model
    second = slot.load(tiny.int4, name="support", version="2")
    assert slot.get() is second
    with pytest.raises(EngineClosed):
        first.engine.stream(prompt, params())
    assert "".join(p.text for p in running) and running.finish_reason == "stop"  # finished on the old one
    broken = variants.copy_variant(tiny.fp32, tmp_path / "broken")
    (broken / "model.onnx.data").unlink()
    with pytest.raises(VariantError, match="model.onnx.data"):
        slot.load(broken, name="support", version="3")
    assert slot.get() is second and "model.onnx.data" in (slot.last_error or "")
    assert second.engine.complete(prompt, params()).text
    slot.unload()
    assert slot.current is None


# -- a damaged variant fails to load, naming the file ---------------------------------------------

def _remove(name: str):
    return lambda root: (root / name).unlink()


def _write(name: str, data: bytes):
    return lambda root: (root / name).write_bytes(data)


def _truncate(name: str, size: int):
    return lambda root: os.truncate(root / name, size)


DAMAGE = [
    ("missing-config", _remove("genai_config.json"), "genai_config.json"),
    ("missing-graph", _remove("model.onnx"), "model.onnx"),
    ("missing-weights", _remove("model.onnx.data"), "model.onnx.data"),
    ("missing-tokenizer", _remove("tokenizer.json"), "tokenizer.json"),
    ("corrupt-config", _write("genai_config.json", b"{not json"), "genai_config.json"),
    ("config-without-context", _write("genai_config.json", json.dumps({"model": {"decoder": {}}}).encode()),
     "context_length"),
    ("corrupt-tokenizer-json", _write("tokenizer.json", b"\x00\x01"), "tokenizer.json"),
    ("tokenizer-not-a-tokenizer", _write("tokenizer.json", b"[1, 2]"), "tokenizer.json"),
    ("garbage-graph", _write("model.onnx", b"\x00garbage" * 20), "model.onnx"),
    ("truncated-graph", _truncate("model.onnx", 1000), "model.onnx"),
    ("truncated-weights", _truncate("model.onnx.data", 1000), "model.onnx.data"),
    ("tokenizer-wrong-shape", _write("tokenizer.json", b'{"model": {"type": 7}}'), "tokenizer.json"),
]


@pytest.mark.parametrize(("damage", "named"), [(d, n) for _, d, n in DAMAGE], ids=[i for i, _, _ in DAMAGE])
def test_a_damaged_variant_fails_to_load_naming_the_file(tiny: variants.TinyVariants, tmp_path: Path,
                                                         damage, named: str) -> None:
    root = variants.copy_variant(tiny.fp32, tmp_path / "variant")
    damage(root)
    with pytest.raises(VariantError) as caught:
        Engine.load(root, threads=1)
    message = str(caught.value)
    assert named in message and "rebuild" in message


def test_a_missing_directory_is_a_variant_error(tmp_path: Path) -> None:
    with pytest.raises(VariantError, match="does not exist"):
        check_variant(tmp_path / "nowhere")


def test_graph_precision_reads_the_builders_quantization(tiny: variants.TinyVariants) -> None:
    assert graph_precision((tiny.int4 / "model.onnx").read_bytes()) == "int4"
    assert graph_precision((tiny.fp32 / "model.onnx").read_bytes()) == "fp32"
    assert graph_precision(b"") == "fp32"


def test_generating_loads_no_heavy_library(tiny: variants.TinyVariants) -> None:
    code = (f"import sys\nfrom pathlib import Path\nfrom agent.engine import Engine, SamplingParams\n"
            f"engine = Engine.load(Path({str(tiny.int4)!r}), threads=1)\n"
            "assert engine.complete('<|user|>\\nhi\\n<|assistant|>\\n', SamplingParams(max_tokens=8)).text\n"
            "engine.close()\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'controller')]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
