"""The fallback route, for architectures onnxruntime-genai's model builder does not know (GPT-2,
GPT-NeoX, OPT, ...): optimum-onnx's exporter writes an fp32 decoder with a KV cache
(``text-generation-with-past``: inputs ``input_ids``, ``attention_mask``, ``position_ids`` where
the architecture uses them, ``past_key_values.N.key/value``; outputs ``logits``, ``present.N.*``),
and quantize.py makes int8 / int4 / fp16 of it. Such a variant has no ``genai_config.json``; its
``slmops-variant.json`` says ``"runtime": "onnxruntime"``: it is served by a plain onnxruntime
decode loop (the agent's agent/engine/ort_loop.py), not by onnxruntime-genai.

The export runs in a process of its own (``python -m controller.build.optimum_export --model DIR
--out DIR``), like the genai builder, into a temporary directory renamed into place on success.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.build.genai_builder import LOG_TAIL_CHARS, BuildError
from controller.pipeline.events import Events
from controller.pipeline.modelkit.files import replace_dir, temp_dir_beside

MODULE = "controller.build.optimum_export"
TASK = "text-generation-with-past"


def optimum_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"optimum {version('optimum')}, optimum-onnx {version('optimum-onnx')}"
    except PackageNotFoundError:
        return "unknown"


def export_onnx(model_dir: Path, out_dir: Path, *, events: Events | None = None,
                timeout_s: float | None = None, python: str = sys.executable) -> float:
    """Export ``model_dir`` to an fp32 ONNX decoder with a KV cache in ``out_dir`` (replaced if
    it exists); the seconds it took. Raises BuildError with the exporter's output tail."""
    events = events or Events()
    tmp = temp_dir_beside(Path(out_dir))
    started = time.monotonic()
    try:
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen([python, "-m", MODULE, "--model", str(model_dir), "--out", str(tmp)],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                while process.poll() is None:
                    events.check_cancelled()
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        raise BuildError(f"the ONNX export of {model_dir} ran past {timeout_s:.0f} s")
                    time.sleep(0.2)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
            log.seek(0)
            text = log.read().decode("utf-8", errors="replace").strip()
        if process.returncode != 0 or not (tmp / "model.onnx").is_file():
            tail = f"; its output ended with:\n{text[-LOG_TAIL_CHARS:]}" if text else ""
            raise BuildError(f"optimum's ONNX export failed on {model_dir} (exit {process.returncode})"
                             f"{tail}")
        replace_dir(tmp, Path(out_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    from optimum.exporters.onnx import main_export

    main_export(str(args.model), output=str(args.out), task=TASK, device="cpu", do_validation=False,
                trust_remote_code=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
