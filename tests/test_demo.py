"""`slmops demo` as a user runs it, on the toy recipe: a real controller and three real agents
(processes), the recipe as a job, the build, a canary-first rollout, requests through each agent's
OpenAI endpoint, each device's benchmark and the telemetry; and nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli.demo_cmd import _fresh
from controller.cli.output import CliError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
SLMOPS = Path(sys.executable).parent / "slmops"
PROFILES = {"edge-1": ("cpu-x86-avx512-int4", "int4"), "edge-2": ("cpu-x86-avx2-int8", "int8"),
            "edge-3": ("cpu-fp32", "fp32")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "XDG_DATA_HOME": str(root / "xdg")}
    done = subprocess.run([str(SLMOPS), "demo", "--data-dir", str(root / "demo"), "--recipe",
                           str(REPO / "recipes" / "support-tiny.yaml"), "--bake", "1s", "--json"],
                          env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    return json.loads(done.stdout), root / "demo"


def test_the_demo_rolls_the_student_out_to_three_profiles_canary_first(demo) -> None:
    result, _ = demo
    student = result["models"]["student"]
    assert student == "support-tiny-student:1"
    assert result["models"]["teacher"] == "support-tiny-teacher:1"
    assert {v["profile"]: v["status"] for v in result["variants"]} == {
        p: "passed" for p, _ in PROFILES.values()}
    rollout = result["rollout"]
    assert rollout["state"] == "succeeded"
    assert [w["size"] for w in rollout["waves"]] == [1, 2]  # the canary, then the rest
    actions = [e["action"] for e in rollout["events"]]
    assert actions.count("wave_started") == 2 and actions[-1] == "succeeded"
    fleet = {d["name"]: d for d in result["fleet"]}
    assert set(fleet) == set(PROFILES)
    for name, (profile, _) in PROFILES.items():
        assert fleet[name]["profile"] == profile
        assert fleet[name]["deployment"]["active_model"] == student
    assert result["comparison"][0]["model"] == "support-tiny-teacher:1"
    assert result["comparison"][1]["params_pct"] < 100  # the student is smaller


def test_each_agent_answered_over_http_and_benchmarked_its_own_variant(demo) -> None:
    result, _ = demo
    assert set(result["answers"]) == set(PROFILES)
    for answers in result["answers"].values():
        assert answers and all("error" not in a and a["completion_tokens"] > 0 for a in answers)
    benches = {b["device_name"]: b for b in result["benchmarks"]}
    for name, (profile, precision) in PROFILES.items():
        assert (benches[name]["profile"], benches[name]["precision"]) == (profile, precision)
        assert benches[name]["report"]["decode_tokens_per_s"] > 0
    telemetry = {t["device"]: t for t in result["telemetry"]}
    for name in PROFILES:  # the questions and the rollout's background traffic reached telemetry
        assert telemetry[name]["requests"] >= 1 and telemetry[name]["completion_tokens"] > 0


def test_the_demo_leaves_nothing_running_and_says_what_to_run_next(demo) -> None:
    result, data_dir = demo
    state = json.loads((data_dir / "demo.json").read_text())
    assert state["processes"] == []
    assert not _alive(int(result["controller"]["pid"]))
    assert result["kept"] is False
    assert any(line.startswith("slmops controller start") for line in result["next"])
    assert [s["number"] for s in result["stages"]] == list(range(1, 9))


def test_a_demo_dir_that_is_not_a_demo_or_still_runs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CliError, match="not empty and holds no earlier demo"):
        _fresh(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "demo.json").write_text(json.dumps({"processes": [{"name": "controller", "pid": os.getpid()}]}))
    with pytest.raises(CliError, match="still running: controller"):
        _fresh(kept)
    (kept / "demo.json").write_text(json.dumps({"processes": []}))
    _fresh(kept)  # an earlier demo that stopped: replaced
    assert not kept.exists()


def test_the_demo_imports_the_bundled_models_its_recipe_starts_from() -> None:
    from controller.demo.flow import bundled_models

    assert bundled_models((REPO / "recipes" / "smollm2-support.yaml").read_text()) == ["smollm2"]
    assert bundled_models((REPO / "recipes" / "support-tiny.yaml").read_text()) == []
    assert bundled_models("model: registry:mine\nteacher: registry:smollm2") == ["smollm2"]


def test_quick_and_a_recipe_together_are_refused(tmp_path: Path) -> None:
    tiny = str(REPO / "recipes" / "support-tiny.yaml")
    done = subprocess.run([str(SLMOPS), "demo", "--quick", "--recipe", tiny, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give either --quick or" in done.stderr
    assert not any(tmp_path.iterdir())
