"""Match a device's hardware report to a built-in device profile name.

The full profiles (precision, execution provider, gates) arrive with the per-profile build;
this is the matching half, so `devices list` shows which build a device will get.
"""

from __future__ import annotations

from collections.abc import Mapping


def match_profile(hardware: Mapping[str, object]) -> str:
    arch = str(hardware.get("arch", "")).lower()
    flags = {str(f) for f in hardware.get("isaFlags", []) or []}  # type: ignore[union-attr]
    accelerators = hardware.get("accelerators", []) or []
    if any(str(a.get("kind", "")) == "cuda" for a in accelerators):  # type: ignore[union-attr]
        return "cuda-fp16"
    if arch in ("x86_64", "amd64"):
        if "avx512_vnni" in flags:
            return "cpu-x86-avx512-int4"
        if "avx2" in flags:
            return "cpu-x86-avx2-int8"
    if arch in ("aarch64", "arm64"):
        return "cpu-arm64-int8"
    return "cpu-fp32"
