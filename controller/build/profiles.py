"""Device profiles: what hardware a profile matches, how a variant is built for it, and the gates
a built variant must pass before it may be deployed.

The built-in profiles cover x86 with AVX-512 VNNI (int4), x86 with AVX2 (int8), ARM64 (int8),
any CPU (fp32) and CUDA (fp16 for GPUs with 8 GiB or more, int4 for the rest). Custom profiles,
or retuned built-in ones, come from a YAML file: see profile_file.py for its format and checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("int4", "int8", "fp16", "fp32")
PROVIDERS = ("cpu", "cuda")
INT8_SCHEMES = ("avx2", "avx512_vnni", "arm64")  # optimum's AutoQuantizationConfig presets
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# Largest exact-match drop (points) allowed against the fp32 reference, by precision: the bundled
# support task's gate (its rows carry intents), as before.
DEFAULT_MAX_DROP = {"int4": 2.0, "int8": 1.0, "fp16": 0.5, "fp32": 0.5}
# The gates that hold for any model, by precision: (min_greedy_agreement, min_rouge_l_vs_fp32,
# max_metric_drop in points of the task metric, max_perplexity_ratio). An fp32 variant runs the
# same weights as the PyTorch model (argmax for argmax: SmolLM2 and the test models agree on
# every answer); quantized ones may reword answers but not lose them. A build whose int4 output
# falls apart after a few tokens (block 128 on SmolLM2's width 576) agrees on none and scores a
# ROUGE-L against fp32 of about 0.1.
DEFAULT_GENERIC = {"int4": (0.3, 0.6, 10.0, 1.3), "int8": (0.5, 0.75, 5.0, 1.15),
                   "fp16": (0.8, 0.9, 2.0, 1.05), "fp32": (0.9, 0.95, 1.0, 1.02)}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MB = 2**20
GB = 2**30
MAX_PROFILES_BYTES = 1024 * 1024


class ProfileError(ValueError):
    """A profile (file) that can't be used. ``problems`` are "field: what is wrong" lines."""

    def __init__(self, origin: str, problems: Sequence[str]) -> None:
        super().__init__("\n".join(f"{origin}: {p}" if origin else p for p in problems))
        self.origin, self.problems = origin, list(problems)


@dataclass(frozen=True)
class HardwareMatch:
    """What a device must have for the profile to match it."""

    arch: tuple[str, ...] = ()  # any of these ("x86_64", "aarch64"); () = any architecture
    isa_flags: tuple[str, ...] = ()  # all of these ("avx512_vnni", "neon")
    min_memory_bytes: int = 0
    accelerator: str = ""  # "" = none needed; "cuda" = the device must report one
    min_accelerator_memory_bytes: int = 0


@dataclass(frozen=True)
class BuildOptions:
    """How a variant is built: precision and execution provider, and the quantizer's knobs."""

    precision: str
    provider: str = "cpu"
    block_size: int = 32  # int4 (MatMulNBits)
    accuracy_level: int = 4  # int4: the minimum compute precision (4 = int8, 1 = fp32, 0 = default)
    int8_scheme: str = ""  # int8: which onnxruntime dynamic quantization preset


@dataclass(frozen=True)
class Gates:
    """What a variant must show on the held-out set before it may be deployed (gates.py). A
    minimum of 0 (or a ratio of 0) is no limit."""

    max_accuracy_drop: float  # the support task's exact-match points lost against the fp32 model
    min_tokens_per_s: float
    max_memory_bytes: int  # peak resident memory of the runtime serving it
    max_p95_ms: float = 0.0  # slowest p95 answer latency (ms) on the held-out prompts; 0 = no limit
    min_greedy_agreement: float = 0.0  # share of greedy answers equal to the fp32 model's
    min_rouge_l_vs_fp32: float = 0.0  # mean ROUGE-L F1 of the variant's answers against fp32's
    max_metric_drop: float = 100.0  # task metric points lost against fp32, where references exist
    max_perplexity_ratio: float = 0.0  # variant / fp32 perplexity on the references, when measured


def default_gates(precision: str, min_tokens_per_s: float, max_memory_bytes: int,
                  max_accuracy_drop: float | None = None, max_p95_ms: float = 0.0) -> Gates:
    """The precision's default quality gates with these speed and memory limits."""
    agreement, rouge, drop, ratio = DEFAULT_GENERIC[precision]
    return Gates(DEFAULT_MAX_DROP[precision] if max_accuracy_drop is None else max_accuracy_drop,
                 min_tokens_per_s, max_memory_bytes, max_p95_ms, agreement, rouge, drop, ratio)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    match: HardwareMatch
    build: BuildOptions
    gates: Gates
    source: str = "built-in"  # or the file that defined (or retuned) it

    @property
    def precision(self) -> str:
        return self.build.precision

    @property
    def cuda(self) -> bool:
        return self.build.provider == "cuda"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, in the YAML's own terms (MB, not bytes), with the source."""
        m, b, g = self.match, self.build, self.gates
        match: dict[str, Any] = {"arch": list(m.arch), "isa_flags": list(m.isa_flags),
                                 "min_memory_mb": m.min_memory_bytes // MB, "accelerator": m.accelerator,
                                 "min_accelerator_memory_mb": m.min_accelerator_memory_bytes // MB}
        return {"name": self.name, "description": self.description, "source": self.source,
                "match": match, "build": dataclasses.asdict(b),
                "gates": {"max_accuracy_drop": g.max_accuracy_drop, "min_tokens_per_s": g.min_tokens_per_s,
                          "max_memory_mb": g.max_memory_bytes // MB, "max_p95_ms": g.max_p95_ms,
                          "min_greedy_agreement": g.min_greedy_agreement,
                          "min_rouge_l_vs_fp32": g.min_rouge_l_vs_fp32, "max_metric_drop": g.max_metric_drop,
                          "max_perplexity_ratio": g.max_perplexity_ratio}}


_X86 = ("x86_64", "amd64")
_ARM64 = ("aarch64", "arm64")

# Matched in this order, first match wins (custom profiles are tried before all of these).
BUILTIN: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        "cuda-fp16", "NVIDIA GPU with 8 GiB or more: fp16 on the CUDA provider",
        HardwareMatch(accelerator="cuda", min_accelerator_memory_bytes=8 * GB),
        BuildOptions("fp16", "cuda", accuracy_level=0), default_gates("fp16", 20.0, 16 * GB)),
    DeviceProfile(
        "cuda-int4", "NVIDIA GPU (incl. Jetson): int4 weights on the CUDA provider",
        HardwareMatch(accelerator="cuda"),
        BuildOptions("int4", "cuda", block_size=32, accuracy_level=0), default_gates("int4", 20.0, 8 * GB)),
    DeviceProfile(
        "cpu-x86-avx512-int4", "x86-64 with AVX-512 VNNI: int4 weights, int8 compute",
        HardwareMatch(arch=_X86, isa_flags=("avx512_vnni",)),
        # Block 128 (the group size of onnxruntime's own int4 quantizer and of GPTQ/AWQ): on the
        # 80 M bench model 525-570 tok/s against 460-480 at block 64 and 415-440 at block 32,
        # measured in turns on one 2-core host; no exact-match loss on the demo student at any of
        # them (docs/benchmarks.md). A model whose widths 128 does not divide (SmolLM2: 576) is
        # built at the largest block that does (quantize.fit_block_size: 64 for SmolLM2).
        BuildOptions("int4", "cpu", block_size=128, accuracy_level=4), default_gates("int4", 10.0, 4 * GB)),
    DeviceProfile(
        "cpu-x86-avx2-int8", "x86-64 with AVX2: int8 dynamic quantization",
        HardwareMatch(arch=_X86, isa_flags=("avx2",)),
        BuildOptions("int8", "cpu", int8_scheme="avx2"), default_gates("int8", 8.0, 4 * GB)),
    DeviceProfile(
        "cpu-arm64-int8", "64-bit ARM (NEON): int8 dynamic quantization",
        HardwareMatch(arch=_ARM64),
        BuildOptions("int8", "cpu", int8_scheme="arm64"), default_gates("int8", 5.0, 2 * GB)),
    DeviceProfile(
        "cpu-fp32", "any CPU: fp32, the reference build",
        HardwareMatch(),
        BuildOptions("fp32", "cpu", accuracy_level=0), default_gates("fp32", 2.0, 8 * GB)),
)


@dataclass(frozen=True)
class ProfileSet:
    """The profiles a controller knows, in matching order (custom first, then built-in)."""

    profiles: tuple[DeviceProfile, ...] = BUILTIN
    files: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[DeviceProfile]:
        return iter(self.profiles)

    def __len__(self) -> int:
        return len(self.profiles)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    def get(self, name: str) -> DeviceProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        close = difflib.get_close_matches(str(name), self.names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise KeyError(f"unknown device profile {name!r}; {hint}known: {', '.join(self.names)} "
                       "(see `slmops profiles list`)")

    def select(self, names: Iterable[str], field_name: str = "profiles") -> list[DeviceProfile]:
        """The named profiles, in the order given; a ProfileError names an unknown or repeated one."""
        chosen: list[DeviceProfile] = []
        problems = []
        for i, name in enumerate(names):
            try:
                profile = self.get(name)
            except KeyError as e:
                problems.append(f"{field_name}[{i}]: {e.args[0]}")
                continue
            if profile in chosen:
                problems.append(f"{field_name}[{i}]: {name} is listed twice")
            chosen.append(profile)
        if not chosen and not problems:
            problems.append(f"{field_name}: name at least one profile (see `slmops profiles list`)")
        if problems:
            raise ProfileError("", problems)
        return chosen


def builtin_profiles() -> ProfileSet:
    return ProfileSet(BUILTIN)


def load_profiles(path: Path | None, base: ProfileSet | None = None) -> ProfileSet:
    """The built-in profiles (or ``base``) with those of the YAML file at ``path`` (see
    profile_file.py); ProfileError names the file and every bad field."""
    from controller.build.profile_file import load_profiles as load

    return load(path, base)


def parse_profiles(text: str, origin: str, base: ProfileSet | None = None) -> ProfileSet:
    from controller.build.profile_file import parse_profiles as parse

    return parse(text, origin, base)


def profiles_from_data(raw: Sequence[Any], origin: str, base: ProfileSet, problems: list[str],
                       field_name: str = "profiles") -> tuple[DeviceProfile, ...]:
    from controller.build.profile_file import profiles_from_data as from_data

    return from_data(raw, origin, base, problems, field_name)
