"""The agent's engine on fallback variants (optimum-onnx's export, ``"runtime": "onnxruntime"``),
run by its plain onnxruntime loop: a tiny trained Llama exported with the fallback's exporter
instead of the genai builder, and a GPT-2 from a config (test_build_variants' model) built by the
fallback route, each compared with the PyTorch model it came from; streaming, stop sequences,
sampling, threads, damaged variants, the chat template, and serving over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import variants  # tests/variants.py: the session's tiny trained model
from test_agent_serve import ServerThread, client  # the HTTP server in a thread, the openai client
from test_build_variants import _gpt2  # the GPT-2 the fallback route is tested with

from agent.engine import Engine, ModelSlot, ParamError, SamplingParams, VariantError, check_variant
from agent.engine.chat_template import ChatTemplate, TemplateError
from agent.engine.ort_loop import Sampler
from agent.engine.variant import RUNTIME_ORT, graph_precision, scan_graph

MAX_NEW_TOKENS = 40


@dataclass(frozen=True)
class Fallbacks:
    llama: Path  # the tiny Llama, optimum-onnx export, fp32
    llama_int4: Path  # the same, int4 weights (MatMulNBits) in model.onnx.data
    gpt2: Path  # GPT-2 from a config, built by the fallback route for cpu-fp32
    gpt2_model: Path  # its Hugging Face directory


@pytest.fixture(scope="module")
def built(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> Fallbacks:
    import torch

    from controller.build import quantize
    from controller.build.builder import build_variant, write_meta
    from controller.build.optimum_export import export_onnx
    from controller.build.profiles import builtin_profiles

    root = tmp_path_factory.mktemp("fallback")
    # A Llama goes the genai route in build_variant; its fallback is the same export and metadata.
    llama = root / "llama-fp32"
    export_onnx(tiny.model_dir, llama)
    quantize.int4_weights(llama, root / "llama-int4", block_size=32, accuracy_level=4)
    write_meta(llama, {"runtime": RUNTIME_ORT, "precision": "fp32", "profile": "cpu-fp32"})
    write_meta(root / "llama-int4", {"runtime": RUNTIME_ORT})  # precision read from the graph
    torch.manual_seed(0)
    gpt2_model = _gpt2(root, tiny.model_dir)
    gpt2 = build_variant(gpt2_model, builtin_profiles().get("cpu-fp32"), root / "gpt2-fp32",
                         scratch=root / "scratch").dir
    return Fallbacks(llama, root / "llama-int4", gpt2, gpt2_model)


@pytest.fixture(scope="module")
def llama(built: Fallbacks):
    engine = Engine.load(built.llama, threads=1)
    yield engine
    engine.close()


def params(**kw) -> SamplingParams:
    return SamplingParams(**{"max_tokens": MAX_NEW_TOKENS, **kw})


def chat_prompt(engine: Engine, prompt: str) -> str:
    return engine.chat_prompt([{"role": "user", "content": prompt}])


# -- the answers are PyTorch's, token for token -----------------------------------------------------

@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_greedy_output_equals_the_pytorch_models_greedy_output_token_for_token(
        tiny: variants.TinyVariants, built: Fallbacks, which: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from controller.pipeline import chat

    variant, model_dir = {"llama": (built.llama, tiny.model_dir),
                          "gpt2": (built.gpt2, built.gpt2_model)}[which]
    assert not (variant / "genai_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    engine = Engine.load(variant, threads=1)
    try:
        assert engine.info.runtime == RUNTIME_ORT and engine.info.precision == "fp32"
        assert engine.info.context_length == 256 and engine.info.eos_token_ids == (tokenizer.eos_token_id,)
        for row in tiny.test_rows[:4]:
            messages = [{"role": "user", "content": row["prompt"]}]
            prompt = engine.chat_prompt(messages)
            assert prompt == chat.prompt_text(row["prompt"])
            assert prompt == tokenizer.apply_chat_template(messages, tokenize=False,
                                                           add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            assert engine.encode(prompt) == ids
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            expected = out[0, len(ids):].tolist()
            stream = engine.stream(prompt, params())
            text = "".join(piece.text for piece in stream)
            assert stream.token_ids == expected, row["prompt"]
            assert text == tokenizer.decode(expected, skip_special_tokens=True)
            assert stream.prompt_tokens == len(ids)
            assert stream.finish_reason == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")
    finally:
        engine.close()


def test_the_trained_llama_ends_its_answers(tiny: variants.TinyVariants, llama: Engine) -> None:
    done = [llama.complete(chat_prompt(llama, row["prompt"]), params(max_tokens=None))
            for row in tiny.test_rows[:4]]
    assert all(d.finish_reason == "stop" and d.text for d in done)


def test_an_int4_fallback_variant_is_smaller_and_answers(built: Fallbacks, llama: Engine) -> None:
    engine = Engine.load(built.llama_int4, threads=1)
    try:
        assert engine.info.precision == "int4" and "model.onnx.data" in engine.info.files
        assert engine.info.size_bytes < llama.info.size_bytes
        done = engine.complete(chat_prompt(engine, "Where is my order #12345?"), params())
        assert done.completion_tokens > 0
    finally:
        engine.close()


# -- streaming, stop sequences, sampling ----------------------------------------------------------

def test_stop_sequences_cut_the_stream_and_never_leak(llama: Engine) -> None:
    prompt = chat_prompt(llama, "Hi. My order #48804 has not arrived. Any news?")
    pieces = [p.text for p in llama.stream(prompt, params(max_tokens=None))]
    full = "".join(pieces)
    assert len(full) > 20 and len(pieces) > 5  # streamed, a piece per token or so
    for stops in ((full[5:9],), (full[-6:-2],), (full[3:6], full[12:20])):
        stream = llama.stream(prompt, params(max_tokens=None, stop=stops))
        text = "".join(p.text for p in stream)
        assert text == full[:min(full.find(s) for s in stops)]
        assert not any(s in text for s in stops) and stream.finish_reason == "stop"
    done = llama.complete(prompt, params(max_tokens=None, stop=("never in the answer",)))
    assert (done.text, done.finish_reason) == (full, "stop")


def test_max_tokens_ends_with_length_and_min_tokens_holds_the_end_back(llama: Engine) -> None:
    prompt = chat_prompt(llama, "Where is my order #12345?")
    assert (llama.complete(prompt, params(max_tokens=3)).completion_tokens,
            llama.complete(prompt, params(max_tokens=3)).finish_reason) == (3, "length")
    natural = llama.complete(prompt, params(max_tokens=None))
    longer = llama.stream(prompt, params(max_tokens=None, min_tokens=natural.completion_tokens + 5))
    list(longer)
    assert longer.completion_tokens >= natural.completion_tokens + 5
    assert not set(longer.token_ids[:natural.completion_tokens + 4]) & set(llama.info.eos_token_ids)


def test_same_seed_gives_the_same_sample_seeds_differ_and_top_k_one_is_greedy(llama: Engine) -> None:
    prompt = chat_prompt(llama, "Hi. Are you open on Sunday?")
    first = [llama.complete(prompt, params(temperature=1.5, seed=s)).text for s in range(5)]
    assert first == [llama.complete(prompt, params(temperature=1.5, seed=s)).text for s in range(5)]
    assert len(set(first)) > 1
    greedy = llama.complete(prompt, params()).text
    assert llama.complete(prompt, params(temperature=1.5, top_k=1, seed=3)).text == greedy
    assert llama.complete(prompt, params(temperature=0.01, seed=3)).text == greedy
    assert llama.complete(prompt, params(temperature=1.0, top_p=0.01, seed=3)).text == greedy


def test_the_sampler_keeps_to_top_k_and_top_p_and_masks_the_end_before_min_tokens() -> None:
    logits = np.log(np.array([0.05, 0.6, 0.3, 0.05], dtype=np.float32))
    top_k = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0), frozenset({3}))
    drawn = {top_k.pick(logits, 5) for _ in range(200)}
    assert drawn == {1, 2}
    top_p = Sampler(SamplingParams(temperature=1.0, top_p=0.85, seed=0), frozenset({3}))
    assert {top_p.pick(logits, 5) for _ in range(200)} == {1, 2}  # 0.6 + 0.3 reach 0.85
    ending = np.array([0.0, 0.0, 0.0, 9.0], dtype=np.float32)
    greedy = Sampler(SamplingParams(min_tokens=2), frozenset({3}))
    assert [greedy.pick(ending, n) for n in range(3)] == [0, 0, 3]
    sampled = Sampler(SamplingParams(temperature=1.0, min_tokens=1, seed=1), frozenset({3}))
    assert all(sampled.pick(ending, 0) != 3 for _ in range(50))


def test_bad_parameters_and_long_prompts_are_refused_naming_the_field(llama: Engine) -> None:
    for kw, field in (({"max_tokens": 10**9}, "max_tokens"), ({"temperature": -0.5}, "temperature"),
                      ({"top_p": 0.0}, "top_p"), ({"seed": -1}, "seed")):
        with pytest.raises(ParamError) as caught:
            llama.stream("<|user|>\nhi\n<|assistant|>\n", params(**kw))
        assert caught.value.field == field
    with pytest.raises(ParamError) as caught:
        llama.stream("order 1 " * 300, params(max_tokens=None))
    assert caught.value.field == "prompt" and "256" in str(caught.value)


# -- threads and cancelling -------------------------------------------------------------------------

def test_concurrent_streams_each_keep_their_own_cache(tiny: variants.TinyVariants, llama: Engine) -> None:
    prompts = [chat_prompt(llama, row["prompt"]) for row in tiny.test_rows[:6]]
    expected = [llama.complete(p, params()).text for p in prompts]
    got: dict[int, str] = {}

    def run(index: int) -> None:
        got[index] = llama.complete(prompts[index], params()).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [got[i] for i in range(len(prompts))] == expected


def test_a_cancelled_stream_stops_before_the_next_token_and_close_lets_it_finish(llama: Engine,
                                                                                  built: Fallbacks) -> None:
    stream = llama.stream(chat_prompt(llama, "Where is my order #12345?"), params(max_tokens=None))
    next(stream)
    stream.cancel()
    assert list(stream) == [] and stream.finish_reason == "cancelled"
    engine = Engine.load(built.llama, threads=1)
    running = engine.stream(chat_prompt(engine, "Where is my order #12345?"), params())
    engine.close()
    assert "".join(p.text for p in running) and running.finish_reason == "stop"


# -- the chat template ---------------------------------------------------------------------------

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + "
          "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + "
          "message['content'] + eos_token }}\n{% else %}\n{{ '<|assistant|>\\n'  + message['content'] | trim "
          "+ eos_token }}\n{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n  "
          "{{- '<|assistant|>' }}\n{%- endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello. "},
     {"role": "user", "content": "Where is order #12345?\nThanks {{ not a tag }}"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Ünïcödé 漢字"}],
]


def test_chat_templates_render_as_transformers_does(tiny: variants.TinyVariants, llama: Engine) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
    for messages in CONVERSATIONS:
        if messages[0]["role"] == "system":  # slmops' own template has no system turn: refused, not dropped
            with pytest.raises(ParamError, match="'system'"):
                llama.chat_prompt(messages)
            continue
        assert llama.chat_prompt(messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    other = PreTrainedTokenizerFast(tokenizer_file=str(tiny.model_dir / "tokenizer.json"), **specials)
    for source in (CHATML, ZEPHYR):
        other.chat_template = source
        for messages in CONVERSATIONS:
            for generation in (True, False):
                expected = other.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=generation)
                rendered = ChatTemplate(source, specials).render(messages, add_generation_prompt=generation)
                assert rendered == expected


@pytest.mark.parametrize(("source", "message"), [
    ("{% if add_generation_prompt %}x", "not valid Jinja"),
    ("{{ raise_exception('no tools here') }}", "refused these messages: no tools here"),
    ("{{ messages[0].content.__class__ }}", "sandbox forbids"),
])
def test_templates_that_fail_say_why(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_a_variant_whose_template_does_not_compile_fails_to_load_naming_the_file(
        built: Fallbacks, tmp_path: Path) -> None:
    root = variants.copy_variant(built.llama, tmp_path / "variant")
    (root / "chat_template.jinja").unlink()
    config = json.loads((root / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for message in messages %}{{ message['content'] | upper }}"
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(VariantError, match=str(root / "tokenizer_config.json") + ": .*not valid Jinja"):
        Engine.load(root, threads=1)


# -- a damaged variant fails to load, naming the file ---------------------------------------------

def _remove(name: str):
    return lambda root: (root / name).unlink()


def _write(name: str, data: bytes):
    return lambda root: (root / name).write_bytes(data)


def _edit_json(name: str, **changes):
    def edit(root: Path) -> None:
        data = json.loads((root / name).read_text())
        data.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del data[key]
        (root / name).write_text(json.dumps(data))
    return edit


DAMAGE = [
    ("missing-graph", "llama", _remove("model.onnx"), "model.onnx is missing"),
    ("missing-weights", "llama_int4", _remove("model.onnx.data"), "model.onnx.data is missing"),
    ("missing-tokenizer", "llama", _remove("tokenizer.json"), "tokenizer.json is missing"),
    ("missing-config", "llama", _remove("config.json"), "config.json is missing"),
    ("corrupt-config", "llama", _write("config.json", b"{not json"), "config.json is not valid JSON"),
    ("corrupt-meta", "llama", _write("slmops-variant.json", b"\x00"),
     "slmops-variant.json is not valid JSON"),
    ("unknown-runtime", "llama", _edit_json("slmops-variant.json", runtime="tensorflow"),
     "slmops-variant.json: runtime must be"),
    ("no-context-length", "llama", _edit_json("config.json", max_position_embeddings=None), "config.json"),
    ("no-end-token", "gpt2", lambda root: (_edit_json("config.json", eos_token_id=None)(root),
                                           _edit_json("generation_config.json", eos_token_id=None)(root),
                                           _edit_json("tokenizer_config.json", eos_token=None)(root)),
     "eos_token_id is missing"),
    ("corrupt-tokenizer", "llama", _write("tokenizer.json", b'{"model": {"type": 7}}'), "tokenizer.json"),
    ("garbage-graph", "llama", _write("model.onnx", b"\x00garbage" * 20), "model.onnx"),
    ("truncated-weights", "llama_int4", lambda root: os.truncate(root / "model.onnx.data", 1000),
     "model.onnx.data"),
]


@pytest.mark.parametrize(("which", "damage", "named"), [(w, d, n) for _, w, d, n in DAMAGE],
                         ids=[i for i, *_ in DAMAGE])
def test_a_damaged_fallback_variant_fails_to_load_naming_the_file(built: Fallbacks, tmp_path: Path,
                                                                  which: str, damage, named: str) -> None:
    root = variants.copy_variant(getattr(built, which), tmp_path / "variant")
    damage(root)
    with pytest.raises(VariantError) as caught:
        Engine.load(root, threads=1)
    message = str(caught.value)
    assert named in message and "rebuild" in message, message


def test_a_slot_keeps_serving_when_a_damaged_fallback_variant_fails_to_load(built: Fallbacks,
                                                                             tmp_path: Path) -> None:
    broken = variants.copy_variant(built.llama, tmp_path / "broken")
    (broken / "model.onnx").unlink()
    slot = ModelSlot(threads=1)
    try:
        first = slot.load(built.gpt2, name="gpt2")
        with pytest.raises(VariantError, match="model.onnx"):
            slot.load(broken, name="llama")
        assert slot.get() is first and "model.onnx" in (slot.last_error or "")
    finally:
        slot.unload()


def test_the_graph_is_scanned_in_chunks_as_if_read_whole(tiny: variants.TinyVariants, built: Fallbacks,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.engine.variant as variant

    monkeypatch.setattr(variant, "_CHUNK", 4099)  # markers and their bytes straddle chunk edges
    for graph in (tiny.int4 / "model.onnx", tiny.fp32 / "model.onnx", built.llama_int4 / "model.onnx",
                  built.llama / "model.onnx"):
        size, precision, mentioned = scan_graph(graph, ["model.onnx.data", "model.onnx_data"])
        data = graph.read_bytes()
        assert (size, precision) == (len(data), graph_precision(data))
        assert mentioned == {n for n in ("model.onnx.data", "model.onnx_data") if n.encode() in data}
    assert check_variant(built.llama_int4).precision == "int4"


# -- serving, benchmarking, staying light ---------------------------------------------------------

def test_the_openai_endpoint_serves_a_fallback_variant(built: Fallbacks) -> None:
    slot = ModelSlot(threads=1)
    slot.load(built.llama, name="support-fallback", version="1")
    server = ServerThread(slot)
    try:
        engine = slot.get().engine
        prompt = "Hi. My order #48804 has not arrived. Any news?"
        expected = engine.complete(chat_prompt(engine, prompt), SamplingParams(max_tokens=None))
        reply = client(server).chat.completions.create(
            model="support-fallback", messages=[{"role": "user", "content": prompt}])
        assert reply.choices[0].message.content == expected.text and reply.choices[0].finish_reason == "stop"
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
            expected.prompt_tokens, expected.completion_tokens)
        chunks = client(server).chat.completions.create(
            model="support-fallback", messages=[{"role": "user", "content": prompt}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    finally:
        server.stop()
        slot.unload()


def test_the_agent_benchmark_runs_a_fallback_variant(built: Fallbacks) -> None:
    from agent.bench import BenchOptions, run_benchmark

    report = run_benchmark(built.gpt2, BenchOptions(n=2, max_tokens=8, warmup=0, threads=1))
    assert report["completion_tokens_total"] == 16 and report["tokens_per_s"] > 0
    assert "config.json" in report["variant"]["files"] and report["variant"]["precision"] == "fp32"


def test_a_fallback_variant_runs_without_onnxruntime_genai_or_any_heavy_library(built: Fallbacks) -> None:
    code = (f"import sys\nfrom pathlib import Path\nfrom agent.engine import Engine, SamplingParams\n"
            f"engine = Engine.load(Path({str(built.llama)!r}), threads=1)\n"
            "prompt = engine.chat_prompt([{'role': 'user', 'content': 'hi'}])\n"
            "assert engine.complete(prompt, SamplingParams(max_tokens=8)).text\n"
            "engine.close()\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'controller', 'onnxruntime_genai')]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr


def test_a_plain_export_directory_without_metadata_is_refused_with_a_hint(built: Fallbacks,
                                                                           tmp_path: Path) -> None:
    root = tmp_path / "export"
    shutil.copytree(built.llama, root)
    (root / "slmops-variant.json").unlink()
    with pytest.raises(VariantError, match=r"genai_config.json is missing.*\"runtime\": \"onnxruntime\""):
        check_variant(root)
