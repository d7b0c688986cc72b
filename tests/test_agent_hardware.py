"""agent.hardware: cpuinfo parsing (x86 and ARM fixtures), accelerators, odd machines."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import pytest

from agent.hardware import (
    detect_hardware,
    detect_jetson,
    parse_cpuinfo,
    parse_nvidia_smi,
    query_nvidia_smi,
)

INTEL_SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq \
avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2
"""

AMD_OLD = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD Ryzen 5 2600 Six-Core Processor
flags\t\t: fpu sse sse2 sse4_1 SSE4_2 avx avx2 fma f16c sha_ni
"""

RASPBERRY_PI_4 = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Serial\t\t: 100000002a5b0b8c
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

JETSON_ORIN = """\
processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid \
asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU part\t: 0xd42
"""

GRAVITON3 = """\
processor\t: 0
Features\t: fp asimd aes crc32 atomics asimddp sve asimdfhm sve2 i8mm bf16 svei8mm svebf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

ARMV7_BOARD = """\
processor\t: 0
model name\t: ARMv7 Processor rev 5 (v7l)
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt
CPU implementer\t: 0x41
CPU part\t: 0xc07
Hardware\t: Allwinner sun8i Family
"""

UNKNOWN_ARM_CORE = """\
Features\t: fp asimd
CPU implementer\t: 0x51
CPU part\t: 0x802
"""


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "model", "flags"),
    [
        (INTEL_SAPPHIRE_RAPIDS, "x86_64", "Intel(R) Xeon(R) Platinum 8480+",
         ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_vnni",
          "avx512bw", "avx512f", "avx512vl", "avx_vnni", "f16c", "fma", "sse4_2"]),
        (AMD_OLD, "x86_64", "AMD Ryzen 5 2600 Six-Core Processor",
         ["avx", "avx2", "f16c", "fma", "sse4_2"]),
        (RASPBERRY_PI_4, "aarch64", "ARM Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)",
         ["asimd", "neon"]),
        (JETSON_ORIN, "aarch64", "ARM Cortex-A78AE", ["asimd", "dotprod", "neon"]),
        (GRAVITON3, "aarch64", "ARM Neoverse-V1",
         ["asimd", "bf16", "dotprod", "i8mm", "neon", "sve", "sve2"]),
        (ARMV7_BOARD, "armv7l", "ARMv7 Processor rev 5 (v7l) (Allwinner sun8i Family)", ["neon"]),
        (UNKNOWN_ARM_CORE, "aarch64", "Qualcomm part 0x802", ["asimd", "neon"]),
        ("Features\t: fp evtstrm\n", "aarch64", "", ["neon"]),  # aarch64 always has NEON
        ("", "x86_64", "", []),
        ("garbage without colons\n\x00\xff", "riscv64", "", []),
    ],
    ids=["sapphire-rapids", "amd-zen1", "rpi4", "jetson-orin", "graviton3", "armv7",
         "unknown-arm-core", "aarch64-no-asimd-listed", "empty", "garbage"],
)
def test_cpuinfo_gives_model_and_curated_sorted_flags(
    cpuinfo: str, arch: str, model: str, flags: list[str]
) -> None:
    assert parse_cpuinfo(cpuinfo, arch) == (model, flags)


def test_detect_hardware_reads_the_injected_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL_SAPPHIRE_RAPIDS)
    hw = detect_hardware(tmp_path, cpuinfo_path=cpuinfo, nvidia_smi=lambda: None)
    assert hw.cpu_model == "Intel(R) Xeon(R) Platinum 8480+"
    assert "amx_int8" in hw.isa_flags


def test_this_machine_is_described_with_sane_values(tmp_path: Path) -> None:
    hw = detect_hardware(tmp_path)
    assert hw.arch and hw.os and hw.hostname
    assert hw.logical_cores >= hw.physical_cores >= 1
    assert hw.memory_total_bytes > 0
    assert hw.disk_total_bytes >= hw.disk_free_bytes > 0
    assert list(hw.isa_flags) == sorted(set(hw.isa_flags))


def test_missing_files_leave_fields_empty_instead_of_raising(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    hw = detect_hardware(tmp_path, cpuinfo_path=missing, nvidia_smi=lambda: None,
                         tegra_release_path=missing, device_model_path=missing)
    assert list(hw.accelerators) == []
    assert hw.logical_cores >= 1


def test_missing_data_dir_uses_its_nearest_existing_parent_and_creates_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    hw = detect_hardware(data_dir, nvidia_smi=lambda: None)
    assert hw.disk_total_bytes > 0
    assert not (tmp_path / "not").exists()


def test_a_failing_nvidia_probe_gives_no_accelerators(tmp_path: Path) -> None:
    def broken() -> str:
        raise RuntimeError("driver/library version mismatch")

    hw = detect_hardware(tmp_path, nvidia_smi=broken, tegra_release_path=tmp_path / "absent")
    assert list(hw.accelerators) == []


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("NVIDIA GeForce RTX 4090, 24564\n", [("NVIDIA GeForce RTX 4090", 24564 * 2**20)]),
        ("Tesla T4, 15360\nTesla T4, 15360\n", [("Tesla T4", 15360 * 2**20)] * 2),
        ("Orin (nvgpu), [N/A]\n", [("Orin (nvgpu)", 0)]),
        ("\n", []),
        ("", []),
    ],
    ids=["one-gpu", "two-gpus", "memory-n/a", "blank-line", "empty"],
)
def test_nvidia_smi_csv_becomes_cuda_accelerators(
    csv: str, expected: list[tuple[str, int]]
) -> None:
    gpus = parse_nvidia_smi(csv)
    assert [(g.name, g.memory_bytes) for g in gpus] == expected
    assert all(g.kind == "cuda" for g in gpus)


def _fake_binary(folder: Path, script: str) -> Path:
    binary = folder / "nvidia-smi"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('echo "Tesla T4, 15360"', "Tesla T4, 15360\n"),
        ("echo 'NVIDIA-SMI has failed' >&2; exit 9", None),
        (f"exec {shutil.which('sleep')} 5", None),  # a hung driver: the timeout gives up
    ],
    ids=["works", "fails", "hangs"],
)
def test_nvidia_smi_is_run_from_path_and_any_failure_means_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expected: str | None
) -> None:
    _fake_binary(tmp_path, script)
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    assert query_nvidia_smi(timeout_s=0.3) == expected
    assert time.monotonic() - started < 2


def test_no_nvidia_smi_on_path_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query_nvidia_smi() is None


def test_jetson_is_found_from_the_l4t_release_file(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, "
                       "EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n")
    model = tmp_path / "model"
    hw = detect_hardware(tmp_path, nvidia_smi=lambda: None, tegra_release_path=release,
                         device_model_path=model)
    assert [(a.kind, a.name) for a in hw.accelerators] == [("cuda", "NVIDIA Jetson (L4T R35.4.1)")]
    assert hw.accelerators[0].memory_bytes == hw.memory_total_bytes  # unified memory

    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    jetson = detect_jetson(release, model, 8 * 2**30)
    assert jetson is not None and jetson.name == "NVIDIA Jetson Orin Nano Developer Kit"


def test_jetson_with_nvidia_smi_is_listed_once(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0\n")
    hw = detect_hardware(tmp_path, nvidia_smi=lambda: "Orin (nvgpu), [N/A]\n",
                         tegra_release_path=release)
    assert [a.name for a in hw.accelerators] == ["Orin (nvgpu)"]
