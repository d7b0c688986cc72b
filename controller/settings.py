"""The controller's settings, validated at startup; the one place that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    pass


def split_address(field_name: str, address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{field_name}: {address!r} is not HOST:PORT (e.g. 127.0.0.1:7443)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path
    listen: str = "127.0.0.1:7443"
    enroll_listen: str = ""  # "" = the listen host, port + 1 (or 0 when listen's port is 0)
    db_url: str = ""  # "" = SQLite in data_dir
    retention_ms: int = 7 * 24 * 3600 * 1000
    offline_after_ms: int = 15_000
    ingest_max_delay_ms: int = 20
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_jobs: int = 1  # pipeline jobs (worker processes) running at once
    profiles_file: Path | None = None  # custom device profiles (YAML), beside the built-in ones
    max_concurrent_downloads: int = 8  # blob downloads served at once; more get RESOURCE_EXHAUSTED
    manifest_ttl_s: int = 7 * 24 * 3600  # a signed manifest expires this long after it is issued
    extra_server_names: tuple[str, ...] = field(default=())
    rollout_tick_s: float = 0.5  # how often the rollout engine moves running rollouts on
    rollout_max_in_flight: int = 20  # devices being updated by rollouts at once
    rollout_waves_per_minute: float = 10.0  # waves started per minute, per rollout, at most

    def __post_init__(self) -> None:
        split_address("--listen", self.listen)
        if self.enroll_listen:
            split_address("--enroll-listen", self.enroll_listen)
        if self.retention_ms < 60_000:
            raise SettingsError(f"--retention: {self.retention_ms} ms is less than a minute")
        if self.offline_after_ms < 1000:
            raise SettingsError(f"--offline-after: {self.offline_after_ms} ms is under 1 s")
        if not 1 <= self.max_concurrent_jobs <= 64:
            raise SettingsError(f"--max-jobs: {self.max_concurrent_jobs} is out of range; allowed "
                                "1..64")
        if not 1 <= self.max_concurrent_downloads <= 4096:
            raise SettingsError(f"--max-downloads: {self.max_concurrent_downloads} is out of range; "
                                "allowed 1..4096")
        if not 60 <= self.manifest_ttl_s <= 366 * 24 * 3600:
            raise SettingsError(f"--manifest-ttl: {self.manifest_ttl_s} s is out of range; allowed "
                                "60 s to 366 days")
        if not 0.01 <= self.rollout_tick_s <= 60:
            raise SettingsError(f"rollout_tick_s: {self.rollout_tick_s} s is out of range; allowed "
                                "0.01 to 60 s")
        if not 1 <= self.rollout_max_in_flight <= 10_000:
            raise SettingsError(f"rollout_max_in_flight: {self.rollout_max_in_flight} is out of "
                                "range; allowed 1..10000")
        if not 0.01 <= self.rollout_waves_per_minute <= 10_000:
            raise SettingsError(f"rollout_waves_per_minute: {self.rollout_waves_per_minute} is out of "
                                "range; allowed 0.01..10000")
        if self.profiles_file is not None:
            from controller.build.profiles import ProfileError, load_profiles

            try:  # refused at startup, naming the file and the field
                load_profiles(self.profiles_file)
            except ProfileError as e:
                raise SettingsError(f"--profiles: {e}") from None

    def profiles(self):  # -> controller.build.ProfileSet
        from controller.build.profiles import load_profiles

        return load_profiles(self.profiles_file)

    @property
    def resolved_enroll_listen(self) -> str:
        if self.enroll_listen:
            return self.enroll_listen
        host, port = split_address("--listen", self.listen)
        return f"{host}:{port + 1 if port else 0}"

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fleet.db'}"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "slmops" / "controller"


def config_path_from_env() -> Path | None:
    value = os.environ.get("SLMOPS_CONFIG")
    return Path(value) if value else None
