"""gRPC InferenceService.Generate on a real grpc.aio server (127.0.0.1, port 0) over a real
onnxruntime-genai engine: streaming, usage, errors naming the field, cancellation, telemetry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import variants

from agent.engine import ModelSlot, SamplingParams
from agent.engine.pool import GenerationPool
from agent.serve.grpc_inference import start_grpc_inference
from agent.serve.metrics import ServeMetrics
from agent.telemetry.inference import InferenceSampler
from protos import inference_pb2, inference_pb2_grpc

Req = inference_pb2.GenerateRequest
Msg = inference_pb2.ChatMessage


@pytest.fixture(scope="session")
def rambling(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: its greedy answers run to the end of the context (no <|end|>),
    long enough to be cut off mid-answer."""
    from controller.pipeline.modelkit import build_model

    root = tmp_path_factory.mktemp("rambling")
    build_model("tiny", tiny.model_dir, root / "model", seed=0)
    return variants.build_variant(root / "model", root / "variant", "fp32")


class Served:
    """slot + pool + metrics + the gRPC server on their own event loop thread; a sync stub."""

    def __init__(self, variant: Path | None, workers: int = 2,
                 channel_options: list[tuple[str, Any]] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.slot = ModelSlot()
        if variant is not None:
            self.slot.load(variant)
        self.pool = GenerationPool(workers, 8)
        self.metrics = ServeMetrics()
        self.server = self.run(start_grpc_inference(self.slot, self.pool, "127.0.0.1:0", self.metrics))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}",
                                             options=channel_options or [])
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def generate(self, request: Req) -> list[inference_pb2.GenerateResponse]:
        return list(self.stub.Generate(request, timeout=60))

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop(0))
        self.pool.shutdown()
        self.slot.unload()
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def served(tiny: variants.TinyVariants) -> Iterator[Served]:
    s = Served(tiny.fp32)
    yield s
    s.close()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_generate_streams_the_engines_answer_then_usage(served: Served,
                                                        tiny: variants.TinyVariants) -> None:
    prompt = "<|user|>\n" + tiny.test_rows[0]["prompt"] + "\n<|assistant|>\n"
    responses = served.generate(Req(prompt=prompt, max_tokens=40))
    *pieces, last = responses
    assert pieces and all(r.WhichOneof("body") == "delta" for r in pieces)
    expected = served.slot.get().engine.complete(prompt, SamplingParams(max_tokens=40))
    assert "".join(r.delta.text for r in pieces) == expected.text
    done = last.done
    assert done.model == served.slot.get().name
    assert done.finish_reason == expected.finish_reason
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (
        expected.prompt_tokens, expected.completion_tokens)
    assert done.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_chat_messages_use_the_models_template(served: Served, tiny: variants.TinyVariants) -> None:
    engine = served.slot.get().engine
    question = tiny.test_rows[1]["prompt"]
    *pieces, last = served.generate(Req(messages=[Msg(role="user", content=question)],
                                        max_tokens=30, model=served.slot.get().name))
    prompt = engine.chat_prompt([{"role": "user", "content": question}])
    assert "".join(r.delta.text for r in pieces) == engine.complete(
        prompt, SamplingParams(max_tokens=30)).text
    assert last.done.usage.prompt_tokens == len(engine.encode(prompt))


def test_sampling_with_a_seed_repeats(served: Served) -> None:
    request = Req(prompt="<|user|>\nhello\n<|assistant|>\n", temperature=1.0, top_p=0.9, top_k=20,
                  seed=7, max_tokens=20)
    first, second = served.generate(request), served.generate(request)
    # the same text and the same end; how the text is cut into deltas depends on timing
    assert "".join(r.delta.text for r in first) == "".join(r.delta.text for r in second)
    assert first[-1] == second[-1] and first[-1].HasField("done")


@pytest.mark.parametrize(("fields", "field"), [
    ({"prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "top_p": 0.0}, "top_p"),
    ({"prompt": "hi", "top_k": -1}, "top_k"),
    ({"prompt": "hi", "seed": -3}, "seed"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "hello " * 2000}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "hi", "messages": [Msg(role="user", content="hi")]}, "prompt"),
    ({"messages": [Msg(role="robot", content="hi")]}, "messages[0].role"),
])
def test_bad_request_is_invalid_argument_naming_the_field(served: Served, fields: dict,
                                                          field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.generate(Req(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")
    assert served.generate(Req(prompt="hi", max_tokens=3))[-1].done.usage.completion_tokens >= 1


def test_unknown_model_is_not_found_and_no_model_is_unavailable(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.generate(Req(prompt="hi", model="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in info.value.details()
    empty = Served(None)
    try:
        with pytest.raises(grpc.RpcError) as info:
            empty.generate(Req(prompt="hi"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "--model" in info.value.details()
    finally:
        empty.close()


def test_cancel_mid_stream_stops_the_generation_and_frees_the_worker(rambling: Path) -> None:
    # One worker; the client's flow-control window is tiny, so a client that stops reading
    # stops the server mid-answer (the answer would run to the end of the context).
    served = Served(rambling, workers=1, channel_options=[
        ("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)])
    try:
        call = served.stub.Generate(Req(prompt="hello"), timeout=60)
        assert next(call).WhichOneof("body") == "delta"
        _wait_for(lambda: served.pool.running == 1, "the generation to run")
        call.cancel()
        _wait_for(lambda: served.pool.running == 0, "the worker to be freed")
        stats = served.metrics.stats()
        assert stats["cancelled"] == 1
        full = served.slot.get().engine.complete("hello", SamplingParams(max_tokens=None))
        assert full.finish_reason == "length"  # the answer really was long
        assert stats["completion_tokens"] < full.completion_tokens
        # The single worker serves the next request.
        assert served.generate(Req(prompt="hello", max_tokens=4))[-1].done.finish_reason == "length"
    finally:
        served.close()


def test_requests_flow_into_metrics_and_telemetry(served: Served) -> None:
    sampler = InferenceSampler(lambda: served.metrics)
    assert {v.metric: v.value for v in sampler.sample()}["inference_requests"] == 0
    for _ in range(3):
        served.generate(Req(prompt="<|user|>\nhi\n<|assistant|>\n", max_tokens=8))
    with pytest.raises(grpc.RpcError):
        served.generate(Req(prompt="hi", temperature=9))
    values = {v.metric: v.value for v in sampler.sample()}
    assert values["inference_requests"] == 4
    assert values["inference_errors"] == 1
    assert values["inference_completion_tokens"] >= 3
    assert values["inference_tokens_per_second"] > 0
    assert values["inference_latency_ms"] > 0 and values["inference_latency_p50_ms"] > 0
    assert values["inference_ttft_ms"] > 0
    # The next interval counts only what happened in it.
    assert {v.metric: v.value for v in sampler.sample()}["inference_requests"] == 0


def test_grpc_beside_the_http_server_shares_its_pool_metrics_and_telemetry(
        tiny: variants.TinyVariants) -> None:
    import urllib.request

    from agent.serve import start_server

    served = Served(tiny.fp32)
    try:
        http = served.run(start_server(served.slot, "127.0.0.1", 0))
        grpc_server = served.run(start_grpc_inference(served.slot, http.server.pool, "127.0.0.1:0",
                                                      http.server.metrics))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            list(stub.Generate(Req(prompt="<|user|>\nhi\n<|assistant|>\n", max_tokens=6), timeout=60))
        text = urllib.request.urlopen(f"{http.url}/metrics", timeout=10).read().decode()
        assert 'endpoint="grpc.Generate"' in text
        values = {v.metric: v.value for v in InferenceSampler(lambda: http).sample()}
        assert values["inference_requests"] == 1 and values["inference_latency_p50_ms"] > 0
        served.run(grpc_server.stop(0))
        served.run(http.stop())
    finally:
        served.close()


def test_second_grpc_server_on_a_port_in_use_is_refused_naming_the_address(served: Served) -> None:
    address = f"127.0.0.1:{served.server.port}"
    with pytest.raises(ValueError, match=f"--grpc-listen: can't listen on '{address}'"):
        served.run(start_grpc_inference(served.slot, served.pool, address, served.metrics))
    assert served.generate(Req(prompt="hi", max_tokens=2))  # the first one still serves
