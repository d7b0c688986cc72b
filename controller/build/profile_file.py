"""Custom device profiles from a YAML file, checked field by field.

An operator adds profiles, or retunes a built-in one, in a YAML file::

    profiles:
      - name: pi5-int4                      # 1-63 lowercase letters, digits, '.', '_', '-'
        description: Raspberry Pi 5
        match:                              # every key optional; {} matches any device
          arch: [aarch64, arm64]            # any of these
          isa_flags: [neon, dotprod]        # all of these
          min_memory_mb: 4096
          accelerator: ""                   # "" = none needed; "cuda" = a CUDA device
          min_accelerator_memory_mb: 0
        build:
          precision: int4                   # int4 | int8 | fp16 | fp32
          provider: cpu                     # cpu | cuda
          block_size: 32                    # int4: 16, 32, 64, 128 or 256
          accuracy_level: 4                 # int4: 0 (provider default) .. 4 (int8 compute)
          int8_scheme: arm64                # int8: avx2 | avx512_vnni | arm64 (onnxruntime's)
        gates:
          max_accuracy_drop: 2.0            # exact-match points lost against the fp32 model
          min_tokens_per_s: 5
          max_memory_mb: 2048
          max_p95_ms: 500                   # p95 answer latency; 0 (the default) = no limit
          min_greedy_agreement: 0.3         # share of answers equal to the fp32 model's (0..1)
          min_rouge_l_vs_fp32: 0.6          # mean ROUGE-L of its answers against fp32's (0..1)
          max_metric_drop: 10               # task metric points lost against fp32 (references)
          max_perplexity_ratio: 1.3         # variant / fp32 perplexity, when the build measures it
      - name: cpu-fp32                      # a built-in's name: only what is written changes
        gates: {min_tokens_per_s: 1}

A new profile needs ``match`` and ``build``; its gates default to the precision's (profiles.py:
DEFAULT_MAX_DROP and DEFAULT_GENERIC), 1 token/s and 8 GiB. A file with an unknown field,
precision or provider is refused with every problem, each naming its field
(``custom.yaml: profiles[0].build.precision: 'int3' is not ...``). fp16 is built for cuda only and
int8 for cpu only (onnxruntime's dynamic quantization).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.build.profiles import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    GB,
    INT8_SCHEMES,
    MAX_PROFILES_BYTES,
    MB,
    NAME_RE,
    PRECISIONS,
    PROVIDERS,
    BuildOptions,
    DeviceProfile,
    Gates,
    HardwareMatch,
    ProfileError,
    ProfileSet,
    builtin_profiles,
    default_gates,
)

TOP_FIELDS = ("profiles",)
PROFILE_FIELDS = ("name", "description", "match", "build", "gates")
MATCH_FIELDS = ("arch", "isa_flags", "min_memory_mb", "accelerator", "min_accelerator_memory_mb")
BUILD_FIELDS = ("precision", "provider", "block_size", "accuracy_level", "int8_scheme")
GATE_FIELDS = ("max_accuracy_drop", "min_tokens_per_s", "max_memory_mb", "max_p95_ms", "min_greedy_agreement",
               "min_rouge_l_vs_fp32", "max_metric_drop", "max_perplexity_ratio")
ACCELERATORS = ("", "cuda")


def load_profiles(path: Path | None, base: ProfileSet | None = None) -> ProfileSet:
    """The built-in profiles (or ``base``) with those of the YAML file at ``path``, or the base
    alone when ``path`` is None. Raises ProfileError naming the file and every bad field."""
    base = base or builtin_profiles()
    if path is None:
        return base
    path = Path(path)
    label = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(label, ["no such file"]) from None
    except OSError as e:
        raise ProfileError(label, [f"can't read it: {e.strerror}"]) from None
    if len(data) > MAX_PROFILES_BYTES:
        raise ProfileError(label, [f"{len(data)} bytes; a profiles file is at most {MAX_PROFILES_BYTES}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(label, [f"not UTF-8 text (byte {e.start})"]) from None
    return parse_profiles(text, label, base)


def parse_profiles(text: str, origin: str, base: ProfileSet | None = None) -> ProfileSet:
    """``text`` (the YAML) over ``base`` (default: the built-ins)."""
    import yaml

    base = base or builtin_profiles()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ProfileError(origin, [f"malformed YAML: {where}{getattr(e, 'problem', None) or e}"]) from None
    if doc is None:
        return ProfileSet(base.profiles, (*base.files, origin))
    if not isinstance(doc, Mapping):
        raise ProfileError(origin, ["expected a mapping with a 'profiles' list"])
    problems = [f"{k}: unknown field; {_suggest(str(k), TOP_FIELDS)}" for k in doc if k not in TOP_FIELDS]
    raw = doc.get("profiles")
    if not isinstance(raw, list):
        problems.append("profiles: expected a list of profiles")
        raise ProfileError(origin, problems)
    merged = profiles_from_data(raw, origin, base, problems)
    if problems:
        raise ProfileError(origin, problems)
    return ProfileSet(merged, (*base.files, origin))


def profiles_from_data(raw: Sequence[Any], origin: str, base: ProfileSet,
                       problems: list[str], field_name: str = "profiles") -> tuple[DeviceProfile, ...]:
    """Profile mappings (as in the YAML's list) over ``base``: a new name comes first in
    matching order, a base name is retuned in place. Problems are appended, not raised."""
    by_name = {p.name: p for p in base.profiles}
    added: list[DeviceProfile] = []
    retuned: dict[str, DeviceProfile] = {}
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"{field_name}[{i}]"
        count = len(problems)
        profile = _profile(item, where, by_name, origin, problems)
        if profile is None or len(problems) > count:
            continue
        if profile.name in seen:
            problems.append(f"{where}.name: {profile.name!r} is defined twice (also "
                            f"{field_name}[{seen[profile.name]}])")
            continue
        seen[profile.name] = i
        if profile.name in by_name:
            retuned[profile.name] = profile
        else:
            added.append(profile)
    return (*added, *(retuned.get(p.name, p) for p in base.profiles))


def _profile(item: Any, where: str, base: Mapping[str, DeviceProfile], origin: str,
             problems: list[str]) -> DeviceProfile | None:
    if not isinstance(item, Mapping):
        problems.append(f"{where}: expected a mapping with name, match, build and gates")
        return None
    _unknown(item, PROFILE_FIELDS, where, problems)
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"{where}.name: expected 1-63 lowercase letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit; got {name!r}")
        return None
    old = base.get(name)
    if old is None:
        missing = [section for section in ("match", "build") if section not in item]
        for section in missing:
            problems.append(f"{where}.{section}: required for a new profile ({name} is not one of "
                            f"{', '.join(base)}; match: {{}} matches any device)")
        if missing:
            return None
    description = item.get("description", old.description if old else "")
    if not isinstance(description, str):
        problems.append(f"{where}.description: expected a string, got {_show(description)}")
    match = _match(item.get("match"), f"{where}.match", old.match if old else HardwareMatch(), problems)
    build = _build(item.get("build"), f"{where}.build", old.build if old else None, problems)
    if build is None:
        return None
    default_gates = old.gates if old and old.build.precision == build.precision else None
    gates = _gates(item.get("gates"), f"{where}.gates", build.precision, default_gates, problems)
    return DeviceProfile(name, str(description), match, build, gates, origin)


def _match(raw: Any, where: str, old: HardwareMatch, problems: list[str]) -> HardwareMatch:
    if raw is None:
        return old
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of {', '.join(MATCH_FIELDS)}")
        return old
    _unknown(raw, MATCH_FIELDS, where, problems)
    arch = _names(raw, "arch", where, old.arch, problems)
    flags = _names(raw, "isa_flags", where, old.isa_flags, problems)
    memory = _number(raw, "min_memory_mb", where, old.min_memory_bytes / MB, problems, minimum=0)
    accelerator = raw.get("accelerator", old.accelerator)
    if accelerator is None:
        accelerator = ""
    if accelerator not in ACCELERATORS:
        problems.append(f"{where}.accelerator: {_show(accelerator)} is not one of "
                        "'' (none needed), cuda")
        accelerator = old.accelerator
    accel_memory = _number(raw, "min_accelerator_memory_mb", where, old.min_accelerator_memory_bytes / MB,
                           problems, minimum=0)
    return HardwareMatch(arch, flags, int(memory * MB), str(accelerator), int(accel_memory * MB))


def _build(raw: Any, where: str, old: BuildOptions | None, problems: list[str]) -> BuildOptions | None:
    if raw is None:
        return old
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of {', '.join(BUILD_FIELDS)}")
        return old
    _unknown(raw, BUILD_FIELDS, where, problems)
    count = len(problems)
    precision = raw.get("precision", old.precision if old else None)
    if precision not in PRECISIONS:
        problems.append(f"{where}.precision: {_show(precision)} is not a precision; use one of "
                        f"{', '.join(PRECISIONS)}")
    provider = raw.get("provider", old.provider if old else "cpu")
    if provider not in PROVIDERS:
        problems.append(f"{where}.provider: {_show(provider)} is not an execution provider slmops "
                        f"builds for; use one of {', '.join(PROVIDERS)}")
    same = old is not None and old.precision == precision
    block = raw.get("block_size", old.block_size if same and old else 32)
    if block not in BLOCK_SIZES or isinstance(block, bool):
        problems.append(f"{where}.block_size: {_show(block)} is not one of "
                        f"{', '.join(map(str, BLOCK_SIZES))}")
    default_level = (old.accuracy_level if same and old else 4 if provider == "cpu" and precision == "int4"
                     else 0)
    level = raw.get("accuracy_level", default_level)
    if level not in ACCURACY_LEVELS or isinstance(level, bool):
        problems.append(f"{where}.accuracy_level: {_show(level)} is not one of 0, 1, 2, 3, 4 "
                        "(0 = the provider's default, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute)")
    scheme = raw.get("int8_scheme", old.int8_scheme if same and old else "")
    if scheme is None:
        scheme = ""
    if scheme and scheme not in INT8_SCHEMES:
        problems.append(f"{where}.int8_scheme: {_show(scheme)} is not one of {', '.join(INT8_SCHEMES)}")
    if len(problems) > count:
        return None
    if precision == "int8" and provider != "cpu":
        problems.append(f"{where}.provider: int8 variants are built with onnxruntime's dynamic "
                        "quantization, which runs on the cpu provider only; use int4 or fp16 for cuda")
        return None
    if precision == "fp16" and provider != "cuda":
        problems.append(f"{where}.precision: fp16 is built for the cuda provider only (onnxruntime's "
                        "CPU kernels don't run the fp16 graph, and it gains nothing on a CPU); use "
                        "fp32, int8 or int4 for cpu")
        return None
    if precision == "int8" and not scheme:
        scheme = "avx2"
    if precision != "int8" and scheme:
        problems.append(f"{where}.int8_scheme: only int8 builds use a scheme; this one is {precision}")
        return None
    return BuildOptions(str(precision), str(provider), int(block), int(level), str(scheme))


def _gates(raw: Any, where: str, precision: str, old: Gates | None, problems: list[str]) -> Gates:
    default = old or default_gates(precision, 1.0, 8 * GB)
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of {', '.join(GATE_FIELDS)}")
        return default
    _unknown(raw, GATE_FIELDS, where, problems)
    drop = _number(raw, "max_accuracy_drop", where, default.max_accuracy_drop, problems, minimum=0, top=100)
    speed = _number(raw, "min_tokens_per_s", where, default.min_tokens_per_s, problems, minimum=0)
    memory = _number(raw, "max_memory_mb", where, default.max_memory_bytes / MB, problems, minimum=1)
    p95 = _number(raw, "max_p95_ms", where, default.max_p95_ms, problems, minimum=0)
    agreement = _number(raw, "min_greedy_agreement", where, default.min_greedy_agreement, problems,
                        minimum=0, top=1)
    rouge = _number(raw, "min_rouge_l_vs_fp32", where, default.min_rouge_l_vs_fp32, problems,
                    minimum=0, top=1)
    metric_drop = _number(raw, "max_metric_drop", where, default.max_metric_drop, problems,
                          minimum=0, top=100)
    ratio = _number(raw, "max_perplexity_ratio", where, default.max_perplexity_ratio, problems, minimum=0)
    return Gates(float(drop), float(speed), int(memory * MB), float(p95), float(agreement), float(rouge),
                 float(metric_drop), float(ratio))


def _names(raw: Mapping[str, Any], key: str, where: str, old: tuple[str, ...],
           problems: list[str]) -> tuple[str, ...]:
    if key not in raw:
        return old
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{where}.{key}: expected a list of names, got {_show(value)}")
        return old
    return tuple(v.strip().lower() for v in value)


def _number(raw: Mapping[str, Any], key: str, where: str, default: float, problems: list[str], *,
            minimum: float, top: float | None = None) -> float:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        problems.append(f"{where}.{key}: expected a number, got {_show(value)}")
        return default
    if value < minimum or (top is not None and value > top):
        bound = f"between {minimum:g} and {top:g}" if top is not None else f"at least {minimum:g}"
        problems.append(f"{where}.{key}: {value} must be {bound}")
        return default
    return float(value)


def _unknown(raw: Mapping[str, Any], known: tuple[str, ...], where: str, problems: list[str]) -> None:
    for key in raw:
        if key not in known:
            problems.append(f"{where}.{key}: unknown field; {_suggest(str(key), known)}")


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)
