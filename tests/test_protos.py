"""The committed generated code is what the .proto files produce."""

from __future__ import annotations

from pathlib import Path

from protos.generate import PROTO_DIR, generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = sorted((tmp_path / "protos").glob("*_pb2*.py*"))
    assert fresh, "protoc wrote nothing"
    committed = sorted(PROTO_DIR.glob("*_pb2*.py*"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    stale = [p.name for p in fresh if p.read_bytes() != (PROTO_DIR / p.name).read_bytes()]
    assert not stale, f"regenerate with `python -m protos.generate` and commit: {stale}"
