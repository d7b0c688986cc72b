"""The on-device gate (agent/delivery/gate.py) on real tiny variants, against the answers the
build's own measure step (controller/build/measure.py, run as the build runs it: a child
process) gives for the same prompts; the disk-space check (agent/delivery/storage.py); and
ModelSlot.install, the switch to an engine that passed its gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import variants

from agent.delivery.gate import GateResult, run_gate
from agent.delivery.manifest import Gate
from agent.delivery.storage import InsufficientStorage, check_space, existing_parent
from agent.engine import Engine, EngineClosed, ModelSlot, SamplingParams

ROOT = Path(__file__).parent.parent
N_GOLDEN = 20


@pytest.fixture(scope="module")
def engine(tiny: variants.TinyVariants):
    loaded = Engine.load(tiny.fp32)
    yield loaded
    loaded.close()


def build_answers(variant: Path, prompts: list[str], scratch: Path) -> list[str]:
    """The answers the build's check records for ``prompts`` (its measure child, greedy, 64 tokens)."""
    rows = scratch / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "controller.build.measure", "--variant", str(variant), "--runtime",
         "onnxruntime-genai", "--rows", str(rows), "--max-new-tokens", "64"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [m for m in messages if m["type"] == "result"][0]["result"]["answers"]


@pytest.fixture(scope="module")
def golden(tiny: variants.TinyVariants,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[str, str], ...]:
    """N_GOLDEN held-out prompts with the answers the build recorded for the fp32 variant."""
    from controller.pipeline.task import support

    prompts = [r["prompt"] for r in support.generate("test", N_GOLDEN, seed=3)]
    answers = build_answers(tiny.fp32, prompts, tmp_path_factory.mktemp("measure"))
    return tuple(zip(prompts, answers, strict=True))


def check(engine: Engine, gate: Gate, **kw) -> GateResult:
    result = run_gate(engine, gate, **kw)
    json.dumps(result.figures)  # reported upstream as JSON
    return result


# -- the gate answers as the build did -------------------------------------------------------------

def test_gate_passes_with_100_percent_when_the_golden_answers_are_the_builds_answers(
        engine: Engine, golden) -> None:
    result = check(engine, Gate(golden=golden, min_accuracy=1.0, max_new_tokens=64))
    assert result.passed and result.reason == ""
    figures = result.figures
    assert figures["accuracy"] == 1.0 and figures["correct"] == figures["n"] == N_GOLDEN
    assert figures["failures"] == [] and figures["chat_template"] is True
    assert figures["timed_answers"] == N_GOLDEN - 1  # the first answer warms up
    assert figures["tokens_per_s"] > 0 and figures["decode_tokens_per_s"] > 0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert figures["memory_bytes"] > 0 and figures["min_accuracy"] == 1.0


def test_a_variant_without_a_chat_template_is_prompted_in_the_builds_plain_format(
        tiny: variants.TinyVariants, golden, tmp_path: Path) -> None:
    plain = variants.copy_variant(tiny.fp32, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config_path = plain / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.pop("chat_template", None)
        config_path.write_text(json.dumps(config))
    engine = Engine.load(plain)
    try:
        assert engine.info.chat_template is None
        result = check(engine, Gate(golden=golden, min_accuracy=1.0))
    finally:
        engine.close()
    assert result.passed, result.reason
    assert result.figures["chat_template"] is False and result.figures["correct"] == N_GOLDEN


# -- a variant that answers wrongly or too slowly is not switched -----------------------------------

def test_wrong_answers_fail_the_gate_with_the_figures(engine: Engine, golden) -> None:
    wrong = tuple((prompt, "I can't help with that.") for prompt, _ in golden)
    mixed = golden[:3] + wrong[3:]
    result = check(engine, Gate(golden=mixed, min_accuracy=0.8))
    assert not result.passed
    assert result.reason == (f"gate: 3/{N_GOLDEN} golden prompts answered exactly (15 %), minimum 80 %")
    figures = result.figures
    assert figures["correct"] == 3 and figures["accuracy"] == 0.15 and figures["n"] == N_GOLDEN
    assert len(figures["failures"]) == 5
    first = figures["failures"][0]
    assert (first["prompt"], first["expected"]) == (golden[3][0], "I can't help with that.")
    assert golden[3][1].startswith(first["got"].removesuffix("..."))  # long answers are cut short


def test_accuracy_at_the_minimum_passes(engine: Engine, golden) -> None:
    wrong = tuple((prompt, "no") for prompt, _ in golden)
    result = check(engine, Gate(golden=golden[:16] + wrong[16:], min_accuracy=0.8))
    assert result.passed and result.figures["correct"] == 16


def test_an_impossible_speed_fails_naming_tokens_per_s(engine: Engine, golden) -> None:
    result = check(engine, Gate(golden=golden, min_accuracy=1.0, min_tokens_per_s=1e9))
    assert not result.passed
    assert result.reason.startswith("gate: ") and "tokens/s, minimum 1000000000" in result.reason
    assert "golden" not in result.reason  # accuracy passed; only what failed is listed


def test_too_much_memory_fails_naming_memory(engine: Engine, golden) -> None:
    result = check(engine, Gate(golden=golden[:4], min_accuracy=1.0, max_memory_bytes=1))
    assert not result.passed and result.reason.startswith("gate: memory ")
    assert "maximum 0.0 MB" in result.reason and result.figures["memory_bytes"] > 1
    assert result.figures["max_memory_bytes"] == 1


def test_memory_counts_only_what_the_process_gained_since_the_baseline(engine: Engine, golden) -> None:
    above = psutil.Process().memory_info().rss + 2**40  # a baseline above anything measured
    result = check(engine, Gate(golden=golden[:4], min_accuracy=1.0, max_memory_bytes=1),
                   baseline_rss=above)
    assert result.passed and result.figures["memory_bytes"] == 0
    assert result.figures["baseline_rss_bytes"] == above


def test_every_failed_check_is_listed_with_measured_and_limit(engine: Engine, golden) -> None:
    wrong = tuple((prompt, "no") for prompt, _ in golden[:4])
    result = check(engine, Gate(golden=wrong, min_accuracy=0.5, min_tokens_per_s=1e9,
                                max_p95_ms=0.001, max_memory_bytes=1))
    parts = result.reason.removeprefix("gate: ").split("; ")
    assert result.reason.startswith("gate: ") and len(parts) == 4
    assert parts[0] == "0/4 golden prompts answered exactly (0 %), minimum 50 %"
    assert "tokens/s, minimum 1000000000" in parts[1]
    assert parts[2].startswith("p95 latency ") and parts[2].endswith("ms per answer, maximum 0.001 ms")
    assert parts[3].startswith("memory ")


def test_without_golden_prompts_accuracy_is_skipped_and_speed_still_measured(engine: Engine) -> None:
    result = check(engine, Gate(max_new_tokens=16))
    assert result.passed
    figures = result.figures
    assert figures["accuracy"] is None and "no golden prompts" in figures["accuracy_skipped"]
    assert figures["tokens_per_s"] > 0 and figures["p95_ms"] > 0
    slow = check(engine, Gate(max_new_tokens=16, min_tokens_per_s=1e9))
    assert not slow.passed and "tokens/s" in slow.reason and "golden" not in slow.reason


def test_a_prompt_that_does_not_fit_the_context_counts_as_not_answered(engine: Engine, golden) -> None:
    long_prompt = "please " * 400
    result = check(engine, Gate(golden=((long_prompt, "x"),) + golden[:3], min_accuracy=1.0))
    assert not result.passed and result.reason.startswith("gate: 3/4 golden prompts")
    assert "not answered" in result.figures["failures"][0]["got"]
    assert "context" in result.figures["failures"][0]["got"]


def test_a_closed_engine_fails_the_gate_instead_of_raising(tiny: variants.TinyVariants, golden) -> None:
    closed = Engine.load(tiny.int4)
    closed.close()
    result = check(closed, Gate(golden=golden[:2]))
    assert not result.passed and result.reason.startswith("gate: the variant failed while answering")
    assert "EngineClosed" in result.reason


# -- the switch to a gated engine ---------------------------------------------------------------------

def test_install_swaps_the_engine_and_a_stream_started_before_finishes_on_the_old_one(
        tiny: variants.TinyVariants, golden) -> None:
    slot = ModelSlot(threads=1)
    first = slot.load(tiny.fp32, name="support", version="1")
    prompt = first.engine.chat_prompt([{"role": "user", "content": golden[0][0]}])
    params = SamplingParams(max_tokens=64, temperature=0.0)
    expected = first.engine.complete(prompt, params).text
    running = first.engine.stream(prompt, params)
    head = next(running).text  # started on the first engine
    gated = Engine.load(tiny.int4, threads=1)
    installed = slot.install(gated, name="support", version="2", load_seconds=0.25)
    assert slot.get() is installed and installed.engine is gated
    assert (installed.name, installed.version, installed.load_seconds) == ("support", "2", 0.25)
    with pytest.raises(EngineClosed):
        first.engine.stream(prompt, params)  # the old engine takes no new requests
    text = head + "".join(piece.text for piece in running)
    assert running.finish_reason in ("stop", "length")
    assert text == expected  # finished on the old engine
    assert gated.complete(prompt, params).text  # new requests go to the new one
    again = slot.install(gated, name=None, version="2", load_seconds=0.0)
    assert again.name == gated.info.name and gated.complete(prompt, params).text  # not closed
    slot.unload()


def test_load_still_swaps_through_install(tiny: variants.TinyVariants) -> None:
    slot = ModelSlot(threads=1)
    loaded = slot.load(tiny.int4, version="7")
    assert slot.get() is loaded and loaded.name == loaded.engine.info.name and loaded.load_seconds > 0
    assert slot.last_error is None
    slot.unload()


# -- the disk-space check --------------------------------------------------------------------------------

def test_insufficient_storage_is_raised_with_the_numbers(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "created"
    with pytest.raises(InsufficientStorage) as caught:
        check_space(data_dir, 10**18, what="to stage release 7 (1000000000.00 GB to download)")
    error = caught.value
    message = str(error)
    assert message.startswith("insufficient storage: need 1000000000.00 GB more to stage release 7 "
                              "(1000000000.00 GB to download), ")
    assert f"free on {tmp_path}" in message and f"{10**18} bytes needed, {error.free_bytes} free" in message
    assert error.need_bytes == 10**18 and error.free_bytes > 0 and error.path == tmp_path
    assert error.reserve_bytes == 64 * 2**20


def test_the_reserve_keeps_a_margin_free(tmp_path: Path) -> None:
    check_space(tmp_path, 1, what="to download release 1", reserve_bytes=0)
    check_space(tmp_path, 0, what="to download release 1", reserve_bytes=10**18)  # nothing to fetch
    with pytest.raises(InsufficientStorage, match="kept in reserve"):
        check_space(tmp_path, 1, what="to download release 1", reserve_bytes=10**18)
    with pytest.raises(ValueError, match="need_bytes"):
        check_space(tmp_path, -1, what="x")
    assert existing_parent(tmp_path / "a" / "b") == tmp_path
