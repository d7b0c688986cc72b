"""A real agent process with an active model: enrolled with a real controller, serving local
apps over HTTP (the official OpenAI client) and gRPC, benchmarking on the controller's command,
its inference figures in the controller's telemetry, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

import grpc
import pytest
from procs import ProcessHarness
from variants import tiny_variants

from protos import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
            return json.loads(r.read())["status"] == "ok"
    except OSError:
        return False


@pytest.fixture()
def procs(tmp_path):
    harness = ProcessHarness(tmp_path)
    yield harness
    harness.cleanup()


@pytest.mark.timeout(240)
def test_agent_run_with_a_model_serves_benches_and_reports(procs: ProcessHarness,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    from openai import OpenAI

    variant = tiny_variants(tmp_path_factory).int4
    procs.start_controller()
    token = procs.create_token("site=lab", uses=1)["token"]
    http_port, grpc_port = _free_port(), _free_port()
    agent = procs.start_agent("edge-1", token=token, extra=(
        "--model", str(variant), "--serve", f"127.0.0.1:{http_port}",
        "--grpc-listen", f"127.0.0.1:{grpc_port}"))
    url = f"http://127.0.0.1:{http_port}"
    device = procs.wait_until(agent.device_id, 30, "edge-1 to enroll")
    procs.wait_until(lambda: _healthy(url), 30, "the agent's HTTP server to be healthy")

    # A local app, through the official client: a chat answer with usage counts.
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, max_tokens=24, temperature=0,
                                           messages=[{"role": "user", "content": "Are you open on Sunday?"}])
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0

    # The same model over gRPC, streamed.
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        pieces = list(stub.Generate(inference_pb2.GenerateRequest(prompt="Are you open on Sunday?",
                                                                  max_tokens=8), timeout=60))
    assert pieces[-1].done.finish_reason in ("stop", "length") and pieces[-1].done.usage.completion_tokens > 0
    assert "".join(p.delta.text for p in pieces[:-1])

    # The controller asks the device for a benchmark; it is stored and shown with the device.
    report = procs.cli("devices", "bench", device, "--prompts", "3", "--max-tokens", "16", "--timeout", "2m")
    assert report["device_id"] == device
    assert report["report"]["decode_tokens_per_s"] > 0
    shown = procs.cli("devices", "show", device)
    assert shown["benchmarks"] and shown["benchmarks"][0]["id"] == report["id"]

    # Its inference figures reach the controller's telemetry.
    def served() -> float:
        result = procs.cli("telemetry", "query", "--device", device, "--metric", "inference_requests",
                           "--since", "10m", "--agg", "max")
        points = [p for s in result.get("series", []) for p in s.get("points", [])]
        return max((p.get("value", 0) for p in points), default=0)
    procs.wait_until(served, 30, "inference_requests in the controller's telemetry", interval=0.5)

    agent.proc.signal(signal.SIGTERM)
    assert agent.proc.wait(30) == 0
    assert not _healthy(url)
