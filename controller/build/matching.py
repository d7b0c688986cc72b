"""Match a device's hardware report to a device profile: the first profile, in the set's order
(custom profiles first, then the built-in ones), whose every condition the device meets.

The report is the agent's ``Hardware`` message as a dict, in either spelling: protobuf's JSON
(``isaFlags``, ``memoryTotalBytes`` as a string) as the fleet store keeps it, or snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.build.profiles import DeviceProfile, HardwareMatch, ProfileSet, builtin_profiles

FALLBACK = "cpu-fp32"  # what a device gets when no profile of a custom set matches


def _get(hardware: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in hardware:
            return hardware[name]
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _accelerators(hardware: Mapping[str, Any]) -> list[tuple[str, int]]:
    found = []
    for item in _get(hardware, "accelerators") or []:
        if isinstance(item, Mapping):
            found.append((str(item.get("kind", "")).lower(),
                          _int(_get(item, "memoryBytes", "memory_bytes"))))
    return found


def matches(rule: HardwareMatch, hardware: Mapping[str, Any]) -> bool:
    """Whether a device with this hardware report meets every condition of ``rule``."""
    arch = str(_get(hardware, "arch") or "").lower()
    if rule.arch and arch not in rule.arch:
        return False
    flags = {str(f).lower() for f in _get(hardware, "isaFlags", "isa_flags") or []}
    if not set(rule.isa_flags) <= flags:
        return False
    if rule.min_memory_bytes and _int(_get(hardware, "memoryTotalBytes", "memory_total_bytes")) < \
            rule.min_memory_bytes:
        return False
    if rule.accelerator:
        fitting = [memory for kind, memory in _accelerators(hardware) if kind == rule.accelerator]
        if not fitting or max(fitting) < rule.min_accelerator_memory_bytes:
            return False
    return True


def match(hardware: Mapping[str, Any], profiles: ProfileSet | None = None) -> DeviceProfile:
    """The profile a device with this hardware report gets."""
    profiles = profiles or builtin_profiles()
    for profile in profiles:
        if matches(profile.match, hardware):
            return profile
    return profiles.get(FALLBACK) if FALLBACK in profiles.names else builtin_profiles().get(FALLBACK)


def match_profile(hardware: Mapping[str, object], profiles: ProfileSet | None = None) -> str:
    """The name of the profile a device with this hardware report gets."""
    return match(hardware, profiles).name
