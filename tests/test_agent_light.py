"""The agent stays light: importing it and running its entry point loads no heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "optimum", "peft", "sqlalchemy", "rich", "controller")

# A fresh interpreter records every attempt to import a heavy module, even one that fails
# (so the test means the same whether or not torch is installed here).
PROBE = """
import sys
attempts = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            attempts.append(name)
        return None
sys.meta_path.insert(0, Recorder())
HEAVY = {heavy!r}
{body}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("ATTEMPTS", sorted(set(attempts)), "LOADED", loaded)
assert not attempts and not loaded
"""


@pytest.mark.parametrize("body", [
    "import agent",
    "import agent.cli, agent.daemon, agent.link, agent.enroll, agent.hardware",
    "import agent.telemetry.spool, agent.telemetry.sampler",
    "import agent.engine, agent.engine.pool, agent.serve, agent.serve.openai_http, agent.serve.metrics",
    "import agent.bench, agent.bench_cmd, agent.serve.grpc_inference, agent.serve.local",
    "from agent.cli import main\nsys.argv = ['slmops-agent', 'serve', '--help']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass",
    "from agent.cli import main\nsys.argv = ['slmops-agent', '--help']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass",
], ids=["package", "modules", "telemetry", "engine-and-serve", "bench-and-grpc", "serve-help", "entry-point"])
def test_agent_imports_no_heavy_library(body: str) -> None:
    code = PROBE.format(heavy=HEAVY, body=body)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
