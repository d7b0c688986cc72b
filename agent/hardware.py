"""What the machine is: CPU, ISA flags for inference, memory, disk, accelerators.

Runs once at agent start and on enrollment. It never raises: on an odd machine a field it
cannot read is left empty (or 0), and the reason is logged at debug level.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from protos import common_pb2

log = logging.getLogger(__name__)

CPUINFO_PATH = Path("/proc/cpuinfo")
TEGRA_RELEASE_PATH = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL_PATH = Path("/proc/device-tree/model")
NVIDIA_SMI_TIMEOUT_S = 5.0

# x86 /proc/cpuinfo "flags" worth knowing when picking a kernel or a quantization.
X86_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
})
# ARM /proc/cpuinfo "Features" -> the names we report (armv7 says "neon", aarch64 "asimd").
ARM_FEATURES: dict[str, tuple[str, ...]] = {
    "neon": ("neon",),
    "asimd": ("asimd", "neon"),
    "asimddp": ("dotprod",),
    "i8mm": ("i8mm",),
    "bf16": ("bf16",),
    "sve": ("sve",),
    "sve2": ("sve2",),
}
_AARCH64 = frozenset({"aarch64", "arm64", "armv8l"})

# "CPU implementer" / "CPU part" of common edge boards; anything else is shown as raw hex.
_ARM_IMPLEMENTERS = {
    "0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x48": "HiSilicon",
    "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere",
}
_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75", ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd40"): "Neoverse-V1", ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE", ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710", ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2", ("0x4e", "0x004"): "Carmel",
}

T = TypeVar("T")


def _safe(what: str, fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - any odd machine must still enroll: log and go on
        log.debug("hardware: cannot read %s: %s", what, exc)
        return default


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing parent (creates nothing)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def parse_cpuinfo(text: str, arch: str) -> tuple[str, list[str]]:
    """(cpu_model, isa_flags) from /proc/cpuinfo text; the first processor's block decides."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())

    flags: set[str] = set()
    flags.update(f for f in info.get("flags", "").lower().split() if f in X86_FLAGS)
    for feature in info.get("Features", "").lower().split():
        flags.update(ARM_FEATURES.get(feature, ()))
    if arch.lower() in _AARCH64:
        flags.add("neon")  # Advanced SIMD is mandatory in ARMv8-A
    return _cpu_model(info), sorted(flags)


def _cpu_model(info: dict[str, str]) -> str:
    implementer = info.get("CPU implementer", "").lower()
    part = info.get("CPU part", "").lower()
    core = ""
    if (implementer, part) in _ARM_PARTS:
        # Better than ARM's generic "model name" ("ARMv8 Processor rev 1 (v8l)").
        core = f"{_ARM_IMPLEMENTERS[implementer]} {_ARM_PARTS[implementer, part]}"
    core = core or info.get("model name", "")
    if not core and implementer:
        vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
        core = f"{vendor} part {part}" if part else vendor
    board = info.get("Model") or info.get("Hardware", "")  # e.g. "Raspberry Pi 4 Model B Rev 1.4"
    if core and board:
        return f"{core} ({board})"
    return core or board


def query_nvidia_smi(
    which: Callable[[str], str | None] = shutil.which, timeout_s: float = NVIDIA_SMI_TIMEOUT_S
) -> str | None:
    """nvidia-smi's CSV of name, memory.total (MiB), or None if absent or failing."""
    binary = which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("hardware: nvidia-smi failed: %s", exc)
        return None
    return done.stdout


def parse_nvidia_smi(text: str) -> list[common_pb2.Accelerator]:
    """One Accelerator per line of ``name, memory_mib``; "[N/A]" memory becomes 0."""
    out = []
    for line in text.splitlines():
        name, sep, memory = line.rpartition(",")
        if not sep:
            name, memory = memory, ""
        name = name.strip()
        if not name:
            continue
        try:
            mib = float(memory)
        except ValueError:  # "[N/A]" on some boards
            mib = 0.0
        out.append(common_pb2.Accelerator(kind="cuda", name=name, memory_bytes=int(mib * 2**20)))
    return out


def detect_jetson(
    tegra_release_path: Path, device_model_path: Path, memory_total_bytes: int
) -> common_pb2.Accelerator | None:
    """The Jetson's integrated GPU, from L4T's release file; None if this is not a Jetson."""
    release = _read_text(tegra_release_path)
    if not release:
        return None
    # "# R35 (release), REVISION: 4.1, GCID: ..." -> "R35.4.1"
    fields = release.lstrip("# ").split(",")
    version = fields[0].split()[0] if fields[0].split() else ""
    for field in fields[1:]:
        key, _, value = field.partition(":")
        if key.strip() == "REVISION" and value.strip():
            version = f"{version}.{value.strip()}"
    name = _read_text(device_model_path).strip("\x00 \n") or f"NVIDIA Jetson (L4T {version})"
    # Unified memory: the GPU shares system RAM, so what it can use is the machine's total.
    return common_pb2.Accelerator(kind="cuda", name=name, memory_bytes=memory_total_bytes)


def detect_hardware(
    data_dir: Path,
    *,
    cpuinfo_path: Path = CPUINFO_PATH,
    nvidia_smi: Callable[[], str | None] = query_nvidia_smi,
    tegra_release_path: Path = TEGRA_RELEASE_PATH,
    device_model_path: Path = DEVICE_TREE_MODEL_PATH,
) -> common_pb2.Hardware:
    """Describe this machine; the disk fields are for the filesystem holding ``data_dir``."""
    hw = common_pb2.Hardware()
    hw.arch = _safe("arch", platform.machine, "")
    no_flags: list[str] = []
    cpu_model, flags = _safe("cpuinfo", lambda: parse_cpuinfo(_read_text(cpuinfo_path), hw.arch),
                             ("", no_flags))
    hw.cpu_model = cpu_model or _safe("cpu model", platform.processor, "")
    hw.isa_flags.extend(flags)

    logical = _safe("logical cores", lambda: psutil.cpu_count(logical=True), None)
    logical = logical or os.cpu_count() or 0
    physical = _safe("physical cores", lambda: psutil.cpu_count(logical=False), None)
    hw.logical_cores = logical
    hw.physical_cores = physical or logical
    hw.memory_total_bytes = _safe("memory", lambda: psutil.virtual_memory().total, 0)

    usage = _safe("disk", lambda: shutil.disk_usage(existing_ancestor(data_dir)), None)
    if usage is not None:
        hw.disk_total_bytes, hw.disk_free_bytes = usage.total, usage.free

    no_gpus: list[common_pb2.Accelerator] = []
    gpus = _safe("nvidia-smi", lambda: parse_nvidia_smi(nvidia_smi() or ""), no_gpus)
    if not gpus:  # JetPack 6 has an nvidia-smi; don't list the same GPU twice
        jetson = _safe("jetson", lambda: detect_jetson(
            tegra_release_path, device_model_path, hw.memory_total_bytes), None)
        gpus = [jetson] if jetson is not None else []
    hw.accelerators.extend(gpus)

    hw.os = _safe("os", lambda: f"{platform.system()} {platform.release()}".strip(), "")
    hw.hostname = _safe("hostname", socket.gethostname, "")
    return hw
