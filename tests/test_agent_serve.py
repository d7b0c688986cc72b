"""The agent's OpenAI-compatible HTTP server, for real: aiohttp on 127.0.0.1 port 0 in a
background event loop, the official `openai` client, raw sockets for clients that hang up, and
the `slmops-agent serve` command as a process."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import variants

from agent.engine import ModelSlot, SamplingParams, VariantError
from agent.serve import RunningServer, start_server

MODEL = "support"


class ServerThread:
    """start_server in an event loop of its own thread, so tests can call it synchronously."""

    def __init__(self, slot: ModelSlot, **kwargs: Any) -> None:
        self.slot = slot
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(start_server(slot, "127.0.0.1", 0, **kwargs))
        self.url = self.running.url

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.call(self.running.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tiny: variants.TinyVariants) -> Iterator[ServerThread]:
    slot = ModelSlot(threads=1)
    slot.load(tiny.fp32, name=MODEL, version="1")
    server = ServerThread(slot)
    yield server
    server.stop()
    slot.unload()


def client(server: ServerThread, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def http(server: ServerThread, path: str, body: Any = None, *, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def greedy(server: ServerThread, prompt: str, **kw: Any) -> Any:
    engine = server.slot.get().engine
    return engine.complete(engine.chat_prompt([{"role": "user", "content": prompt}]),
                           SamplingParams(max_tokens=None, **kw))


def metrics(server: ServerThread) -> dict[str, float]:
    """The /metrics samples as {'name{labels}': value}, checking every line's syntax."""
    status, headers, body = http(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) [a-z_]+ .+", line), line
            continue
        match = re.fullmatch(r'([a-z_]+(?:\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})?) (\S+)', line)
        assert match, line
        samples[match.group(1)] = float(match.group(2))
    return samples


PROMPT = "Hi. My order #48804 has not arrived. Any news?"


def ask(server: ServerThread, prompt: str = PROMPT, **kw: Any) -> Any:
    return client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                  **kw)


# -- the official client --------------------------------------------------------------------------

def test_chat_completion_with_the_openai_client_matches_the_engine(served: ServerThread) -> None:
    expected = greedy(served, PROMPT)
    reply = ask(served)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "stop" and reply.model == MODEL
    usage = reply.usage
    assert usage.prompt_tokens == expected.prompt_tokens
    assert usage.completion_tokens == expected.completion_tokens
    assert usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_streamed_chat_with_the_openai_client_carries_usage_in_the_last_chunk(served: ServerThread) -> None:
    expected = greedy(served, PROMPT)
    chunks = list(client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == expected.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completions_stream_and_not_with_the_openai_client(served: ServerThread) -> None:
    prompt = f"<|user|>\n{PROMPT}\n<|assistant|>\n"
    expected = greedy(served, PROMPT)
    plain = client(served).completions.create(model=MODEL, prompt=prompt, max_tokens=5)
    assert plain.choices[0].text == expected.text[:len(plain.choices[0].text)]
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 5
    chunks = list(client(served).completions.create(model=MODEL, prompt=prompt, stream=True, max_tokens=100,
                                                    stop=["arrive"]))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == expected.text[:expected.text.index("arrive")] and "arrive" not in text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_lists_the_served_model(served: ServerThread) -> None:
    api = client(served)
    assert [m.id for m in api.models.list()] == [MODEL]
    assert api.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("other")


def test_sampling_with_a_seed_is_reproducible_over_http(served: ServerThread) -> None:
    def ask(seed: int) -> str:
        reply = client(served).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], temperature=1.5, seed=seed,
            max_tokens=40)
        return reply.choices[0].message.content or ""

    assert ask(11) == ask(11)


# -- bad input: an OpenAI-style 4xx, and the server keeps serving ----------------------------------

def _chat(**kw: Any) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **kw}


BAD = [
    ("bad-json", "/v1/chat/completions", b'{"model": "support", "messages": [', 400, None, "invalid_json"),
    ("not-an-object", "/v1/chat/completions", b"[1, 2]", 400, None, "invalid_json"),
    ("unknown-model", "/v1/chat/completions", _chat(model="gpt-9"), 404, "model", "model_not_found"),
    ("no-model", "/v1/completions", {"prompt": "hi"}, 400, "model", "invalid_value"),
    ("huge-max-tokens", "/v1/chat/completions", _chat(max_tokens=10**9), 400, "max_tokens",
     "context_length_exceeded"),
    ("huge-max-completion-tokens", "/v1/chat/completions", _chat(max_completion_tokens=10**9), 400,
     "max_tokens", "context_length_exceeded"),
    ("prompt-too-long-chat", "/v1/chat/completions",
     _chat(messages=[{"role": "user", "content": "order 12 " * 400}]), 400, "messages",
     "context_length_exceeded"),
    ("prompt-too-long", "/v1/completions", {"model": MODEL, "prompt": "order 12 " * 400}, 400, "prompt",
     "context_length_exceeded"),
    ("negative-temperature", "/v1/chat/completions", _chat(temperature=-1), 400, "temperature",
     "invalid_value"),
    ("temperature-a-string", "/v1/chat/completions", _chat(temperature="hot"), 400, "temperature",
     "invalid_value"),
    ("n-two", "/v1/chat/completions", _chat(n=2), 400, "n", "invalid_value"),
    ("bad-role", "/v1/chat/completions", _chat(messages=[{"role": "robot", "content": "x"}]), 400,
     "messages[0].role", "invalid_value"),
    ("no-messages", "/v1/chat/completions", _chat(messages=[]), 400, "messages", "invalid_value"),
    ("prompt-list-of-ids", "/v1/completions", {"model": MODEL, "prompt": [1, 2, 3]}, 400, "prompt",
     "invalid_value"),
    ("stream-not-bool", "/v1/chat/completions", _chat(stream="yes"), 400, "stream", "invalid_value"),
    ("too-large", "/v1/chat/completions", b"x" * (5 << 20), 413, None, "request_too_large"),
    ("nested-100000-deep", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, 400, None,
     "invalid_json"),
    ("nested-100000-deep-inside", "/v1/chat/completions",
     b'{"model": "support", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None,
     "invalid_json"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
        served: ServerThread, path: str, body: Any, status: int, param: str | None, code: str) -> None:
    got, headers, raw = http(served, path, body)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert ask(served).choices[0].message.content == greedy(served, PROMPT).text


def test_a_body_nested_100000_deep_gets_a_400_saying_so(served: ServerThread) -> None:
    got, _, raw = http(served, "/v1/completions", b"[" * 100_000 + b"]" * 100_000)
    assert got == 400, raw
    assert "nested too deeply" in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("max_tokens", [2**62 + 1, 2**63, 10**30])
def test_a_huge_max_tokens_is_told_the_models_real_context_length(served: ServerThread,
                                                                   max_tokens: int) -> None:
    context = served.slot.get().engine.info.context_length
    got, _, raw = http(served, "/v1/chat/completions", _chat(max_tokens=max_tokens))
    assert got == 400, raw
    error = json.loads(raw)["error"]
    assert (error["param"], error["code"]) == ("max_tokens", "context_length_exceeded")
    assert f"context is {context} tokens" in error["message"], error["message"]
    assert str(2**62) not in error["message"]


def test_the_openai_client_raises_its_own_errors_for_ours(served: ServerThread) -> None:
    api = client(served)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=-2)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], stream=True)


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("GET", "/v1/nothing", 404, "unknown_url"),
    ("POST", "/healthz", 405, "method_not_allowed"),
])
def test_unknown_paths_and_methods_answer_in_openai_shape(served: ServerThread, method: str, path: str,
                                                          status: int, code: str) -> None:
    got, _, raw = http(served, path, b"{}" if method == "POST" else None, method=method)
    assert got == status and json.loads(raw)["error"]["code"] == code


# -- clients that hang up ----------------------------------------------------------------------------

async def _cut_off(port: int, index: int) -> bool:
    """A streamed chat that the client abandons after the first generated text; True if it saw
    some text before hanging up."""
    body = json.dumps(_chat(messages=[{"role": "user", "content": f"Where is my order #{10000 + index}?"}],
                            stream=True, max_tokens=200, min_tokens=200)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    seen, data = False, b""
    while not seen:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data += chunk
        seen = b'"content":"' in data.replace(b'"content":""', b"")
    if index % 2:
        writer.transport.abort()  # a reset, as a killed client
    else:
        writer.close()  # an orderly close
    return seen


def test_fifty_streams_cut_off_mid_answer_free_their_workers(tiny: variants.TinyVariants) -> None:
    slot = ModelSlot(threads=1)
    slot.load(tiny.fp32, name=MODEL, version="1")
    server = ServerThread(slot, workers=2, max_queued=64)
    chat_requests = 'slmops_requests_total{endpoint="/v1/chat/completions",status="%d"}'
    try:
        async def cut_off_all() -> list[bool]:
            clients = (_cut_off(server.running.port, i) for i in range(50))
            return await asyncio.wait_for(asyncio.gather(*clients), 120)

        assert all(asyncio.run(cut_off_all()))
        for _ in range(300):  # the server notices each hang-up by itself and stops that generation
            sample = metrics(server)
            ended = sample.get(chat_requests % 499, 0) + sample.get(chat_requests % 200, 0)
            idle = sample["slmops_generations_running"] == sample["slmops_generations_queued"] == 0
            if idle and ended == 50:
                break
            time.sleep(0.1)
        assert sample["slmops_generations_running"] == sample["slmops_generations_queued"] == 0
        assert server.running.stats()["running"] == server.running.stats()["queued"] == 0
        # Each hang-up is counted as 499, unless the answer happened to be sent in full before the
        # server noticed (the model is tiny and fast); most generations are stopped early.
        assert sample.get(chat_requests % 499, 0) + sample.get(chat_requests % 200, 0) == 50
        assert sample.get(chat_requests % 499, 0) >= 1 and sample["slmops_generations_cancelled_total"] >= 1
        assert sample["slmops_completion_tokens_total"] < 50 * 200
        assert ask(server).choices[0].message.content == greedy(server, PROMPT).text
    finally:
        server.stop()
        slot.unload()


def test_a_full_queue_answers_503_and_recovers(tiny: variants.TinyVariants) -> None:
    slot = ModelSlot(threads=1)
    loaded = slot.load(tiny.fp32, name=MODEL)
    server = ServerThread(slot, workers=1, max_queued=0)
    gate = threading.Event()
    try:
        engine = loaded.engine
        blocker = engine.stream(engine.chat_prompt([{"role": "user", "content": "hi"}]),
                                SamplingParams(max_tokens=5))
        server.running.server.pool.submit(blocker, lambda piece: gate.wait(30), lambda error: None)
        status, headers, raw = http(server, "/v1/chat/completions", _chat())
        assert status == 503 and json.loads(raw)["error"]["code"] == "overloaded"
        assert headers["Retry-After"] == "1"
        gate.set()
        for _ in range(300):
            if server.running.server.pool.running == 0:
                break
            time.sleep(0.05)
        assert http(server, "/v1/chat/completions", _chat(max_tokens=5))[0] == 200
    finally:
        gate.set()
        server.stop()
        slot.unload()


# -- keys, health, metrics, loading --------------------------------------------------------------------

def test_an_api_key_guards_v1_but_not_health_or_metrics(tiny: variants.TinyVariants) -> None:
    slot = ModelSlot(threads=1)
    slot.load(tiny.fp32, name=MODEL)
    server = ServerThread(slot, api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        status, _, raw = http(server, "/v1/chat/completions", _chat())
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert [m.id for m in client(server, "s3cret").models.list()] == [MODEL]
        assert http(server, "/healthz")[0] == 200 and http(server, "/metrics")[0] == 200
        assert server.running.host == "127.0.0.1"
    finally:
        server.stop()
        slot.unload()


def test_health_and_requests_follow_loading_unloading_and_a_failed_load(
        tiny: variants.TinyVariants, tmp_path: Path) -> None:
    slot = ModelSlot(threads=1)
    server = ServerThread(slot)
    try:
        status, _, raw = http(server, "/healthz")
        assert status == 503 and json.loads(raw)["status"] == "no_model"
        status, _, raw = http(server, "/v1/chat/completions", _chat())
        assert status == 503 and json.loads(raw)["error"]["code"] == "model_not_loaded"
        assert client(server).models.list().data == []
        slot.load(tiny.fp32, name=MODEL, version="1")
        assert http(server, "/v1/chat/completions", _chat(max_tokens=5))[0] == 200
        broken = variants.copy_variant(tiny.int4, tmp_path / "broken")
        (broken / "tokenizer.json").write_text("{")
        with pytest.raises(VariantError):
            slot.load(broken, name=MODEL, version="2")
        status, _, raw = http(server, "/healthz")
        health = json.loads(raw)
        assert status == 200 and health["version"] == "1" and "tokenizer.json" in health["last_load_error"]
        assert metrics(server)["slmops_model_load_failed"] == 1
        slot.load(tiny.int4, name=MODEL, version="2")
        sample = metrics(server)
        info = 'slmops_model_info{model="support",version="2",variant="variant-int4",precision="int4"}'
        assert sample[info] == 1
        assert http(server, "/v1/chat/completions", _chat(max_tokens=5))[0] == 200
        slot.unload()
        assert http(server, "/healthz")[0] == 503
    finally:
        server.stop()
        slot.unload()


def test_requests_through_many_model_swaps_all_succeed(tiny: variants.TinyVariants) -> None:
    """A request that looked the model up just before a swap closed it asks the new model
    instead of failing: clients never see 503 model_reloading across a switch."""
    slot = ModelSlot(threads=1)
    slot.load(tiny.fp32, name=MODEL, version="1")
    server = ServerThread(slot, workers=2, max_queued=16)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set() and len(statuses) < 3000:
            statuses.append(http(server, "/v1/chat/completions", _chat(max_tokens=2))[0])

    clients = [threading.Thread(target=hammer) for _ in range(3)]
    try:
        for thread in clients:
            thread.start()
        for swap in range(40):
            slot.load(tiny.int4 if swap % 2 == 0 else tiny.fp32, name=MODEL, version=str(swap + 2))
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
        server.stop()
        slot.unload()
    assert statuses and set(statuses) == {200}, collections.Counter(statuses)


def test_metrics_and_stats_count_requests_tokens_and_latency(tiny: variants.TinyVariants) -> None:
    slot = ModelSlot(threads=1)
    slot.load(tiny.fp32, name=MODEL, version="7")
    server = ServerThread(slot)
    try:
        api = client(server)
        usages = [api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}]).usage
                  for p in (PROMPT, "Are you open on Sunday?")]
        list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                         stream=True, max_tokens=4))
        http(server, "/v1/chat/completions", _chat(temperature=-1))
        sample = metrics(server)
        stats = server.running.stats()
        assert sample['slmops_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 3
        assert sample['slmops_requests_total{endpoint="/v1/chat/completions",status="400"}'] == 1
        assert sample['slmops_errors_total{endpoint="/v1/chat/completions",type="invalid_value"}'] == 1
        assert sample["slmops_completion_tokens_total"] == sum(u.completion_tokens for u in usages) + 4
        assert sample["slmops_time_to_first_token_seconds_count"] == 3
        assert sample['slmops_time_to_first_token_seconds_bucket{le="+Inf"}'] == 3
        assert sample['slmops_request_latency_seconds_count{endpoint="/v1/chat/completions"}'] == 4
        info = 'slmops_model_info{model="support",version="7",variant="variant-fp32",precision="fp32"}'
        assert sample[info] == 1
        assert sample["process_resident_memory_bytes"] > 10 << 20 and "process_cpu_percent" in sample
        assert stats["completion_tokens"] == sample["slmops_completion_tokens_total"]
        assert stats["requests"] >= 4 and stats["errors"] == 1 and stats["ttft_seconds_count"] == 3
        assert stats["model"] == MODEL and stats["version"] == "7" and stats["decode_seconds"] > 0
    finally:
        server.stop()
        slot.unload()


# -- the command ---------------------------------------------------------------------------------------

def test_slmops_agent_serve_runs_until_sigterm(tiny: variants.TinyVariants, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("slmops-agent")
    proc = subprocess.Popen([str(exe), "serve", "--model", str(tiny.int4), "--listen", "127.0.0.1:0",
                             "--name", MODEL, "--threads", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        info = json.loads(line)
        assert info["model"] == MODEL and info["precision"] == "int4" and info["url"].startswith("http://127.0.0.1:")
        api = openai.OpenAI(base_url=info["url"] + "/v1", api_key="none", max_retries=0, timeout=60)
        assert api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=8).choices[0].message.content
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "leaked" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_slmops_agent_serve_refuses_a_damaged_variant_naming_the_file(
        tiny: variants.TinyVariants, tmp_path: Path) -> None:
    broken = variants.copy_variant(tiny.fp32, tmp_path / "broken")
    (broken / "model.onnx.data").unlink()
    exe = Path(sys.executable).with_name("slmops-agent")
    result = subprocess.run([str(exe), "serve", "--model", str(broken), "--json"], capture_output=True,
                            text=True, timeout=60, env={**os.environ})
    assert result.returncode == 2
    assert "model.onnx.data" in json.loads(result.stdout)["error"]
