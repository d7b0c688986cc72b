"""The fleet database's tables, in SQLAlchemy Core (portable between SQLite and PostgreSQL).

Times are milliseconds since the epoch (BIGINT). Labels and hardware are JSON text, so the
schema stays the same on both backends.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# The device's last deployment report on its row: (field, column type, default, DDL to add it to
# an older database).
_BIG, _TEXT = "BIGINT NOT NULL DEFAULT 0", "TEXT NOT NULL DEFAULT ''"
DEPLOYMENT_COLUMNS = (
    ("release", BigInteger, 0, _BIG),
    ("model", String(255), "", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("phase", String(32), "", "VARCHAR(32) NOT NULL DEFAULT ''"),
    ("reason", Text, "", _TEXT),
    ("bytes_done", BigInteger, 0, _BIG),
    ("bytes_total", BigInteger, 0, _BIG),
    ("bytes_per_s", Float, 0.0, "FLOAT NOT NULL DEFAULT 0"),
    ("active_model", String(255), "", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("active_release", BigInteger, 0, _BIG),
    ("previous_model", String(255), "", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("previous_release", BigInteger, 0, _BIG),
    ("detail_json", Text, "", _TEXT),
    ("timestamp_ms", BigInteger, 0, _BIG),  # the agent's clock
    ("updated_at_ms", BigInteger, 0, _BIG),  # when the controller stored it
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("verifier", LargeBinary, nullable=False),
    Column("labels", Text, nullable=False, default="{}"),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, default=0),
    Column("revoked", Boolean, nullable=False, default=False),
)

# Every enrollment request's nonce, kept while a request carrying it could still pass the
# clock-skew check, so a captured request is refused a second time, after a restart too.
enrollment_nonces = Table(
    "enrollment_nonces",
    metadata,
    Column("nonce", LargeBinary(64), primary_key=True),
    Column("token_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index("ix_enrollment_nonces_expires", "expires_at_ms"),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("labels", Text, nullable=False, default="{}"),
    Column("hardware", Text, nullable=False, default="{}"),
    Column("profile", String(255), nullable=False, default=""),
    Column("agent_version", String(64), nullable=False, default=""),
    Column("cert_serial", String(128), nullable=False, default=""),
    Column("enrolled_at_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False, default=0),
    Column("removed_at_ms", BigInteger, nullable=False, default=0),
    Column("acked_through_seq", BigInteger, nullable=False, default=0),
    Column("spool_dropped_total", BigInteger, nullable=False, default=0),
    Column("desired_generation", BigInteger, nullable=False, default=1),
    Column("desired_model", String(255), nullable=False, default=""),
    # The operator's choice (`slmops devices set-profile`); "" = use the matched ``profile``.
    Column("profile_override", String(255), nullable=False, default=""),
    # Model delivery: the release assigned (its signed manifest is the device's newest row in
    # ``releases``) and the profile whose variant it is.
    Column("desired_release", BigInteger, nullable=False, default=0),
    Column("desired_profile", String(255), nullable=False, default=""),
    # The device's last DeploymentStatus (protos/delivery.proto), "dep_" + its field name.
    *(Column(f"dep_{name}", kind, nullable=False, default=default)
      for name, kind, default, _ in DEPLOYMENT_COLUMNS),
)

# Columns added after the first release, with their DDL default, so that an older database is
# brought up to date at open (create_all adds missing tables, never missing columns).
ADDED_COLUMNS = {
    "devices": (
        ("profile_override", "VARCHAR(255) NOT NULL DEFAULT ''"),
        ("desired_release", "BIGINT NOT NULL DEFAULT 0"),
        ("desired_profile", "VARCHAR(255) NOT NULL DEFAULT ''"),
        *((f"dep_{name}", ddl) for name, _, _, ddl in DEPLOYMENT_COLUMNS),
    ),
}

# A name is unique among active devices only (removed ones keep theirs); both SQLite and
# PostgreSQL support this partial index, so concurrent enrollments can't share a name.
Index(
    "uq_devices_active_name",
    devices.c.name,
    unique=True,
    sqlite_where=devices.c.removed_at_ms == 0,
    postgresql_where=devices.c.removed_at_ms == 0,
)

# One row per (device, metric, series); points refer to it by a small integer id.
series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), ForeignKey("devices.id"), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("series", String(128), nullable=False),
    UniqueConstraint("device_id", "metric", "series", name="uq_series_key"),
)

# The primary key makes the database itself store a sample's value once.
points = Table(
    "points",
    metadata,
    Column("series_id", Integer, ForeignKey("series.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    PrimaryKeyConstraint("series_id", "seq", name="pk_points"),
    Index("ix_points_series_ts", "series_id", "ts_ms"),
)

# On-device benchmarks (agent/bench.py), one row per report; the identity columns repeat the
# report's, so reports can be listed per device or per model without parsing them.
benchmarks = Table(
    "benchmarks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), ForeignKey("devices.id"), nullable=False),
    Column("model", String(255), nullable=False, default=""),
    Column("version", String(64), nullable=False, default=""),
    Column("profile", String(255), nullable=False, default=""),
    Column("precision", String(32), nullable=False, default=""),
    Column("variant_sha256", String(64), nullable=False, default=""),
    Column("command_id", String(64), nullable=False, default=""),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("report", Text, nullable=False),
    Index("ix_benchmarks_device", "device_id", "created_at_ms"),
    Index("ix_benchmarks_model", "model", "version", "created_at_ms"),
    Index("ix_benchmarks_command", "command_id"),
)

# Every signed manifest the controller issued: one row per assignment (a new release number), per
# rollback instruction (the number of the release it goes back to) and per bundle (device_id "").
# A device's desired manifest is its newest row.
releases = Table(
    "releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("release", BigInteger, nullable=False),
    Column("device_id", String(64), nullable=False, default=""),
    Column("model", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile", String(255), nullable=False),
    Column("manifest_json", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("rollback", Boolean, nullable=False, default=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ix_releases_device", "device_id", "id"),
    Index("ix_releases_release", "release", "device_id"),
)

# Which blobs a device may fetch: those named by a manifest issued to it.
release_blobs = Table(
    "release_blobs",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    PrimaryKeyConstraint("device_id", "sha256", name="pk_release_blobs"),
)

# Named counters that only go up. "release": the last release number handed out; never reused,
# whatever rows are deleted later.
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False, default=0),
)

# Rollouts (controller/rollouts/): one row per rollout, its state machine and its spec; one row
# per targeted device with its wave and where it stands; and the audit trail of who did what.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(320), nullable=False),
    Column("selector", Text, nullable=False, default="{}"),
    Column("waves_spec", String(255), nullable=False),
    Column("wave_sizes", Text, nullable=False, default="[]"),  # JSON list of device counts
    Column("bake_ms", BigInteger, nullable=False, default=0),
    Column("max_failure", String(32), nullable=False, default="0"),
    Column("gates", Text, nullable=False, default="{}"),
    Column("auto_rollback", Boolean, nullable=False, default=True),
    Column("offline_timeout_ms", BigInteger, nullable=False, default=0),
    Column("offline_policy", String(16), nullable=False, default="failed"),
    Column("state", String(16), nullable=False),
    Column("current_wave", Integer, nullable=False, default=0),
    Column("wave_started_ms", BigInteger, nullable=False, default=0),
    Column("bake_started_ms", BigInteger, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("gate_results", Text, nullable=False, default="[]"),
    Column("created_by", String(255), nullable=False, default=""),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("finished_at_ms", BigInteger, nullable=False, default=0),
    Index("ix_rollouts_state", "state"),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", String(64), ForeignKey("rollouts.id"), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("device_name", String(255), nullable=False, default=""),
    Column("wave", Integer, nullable=False),  # -1: skipped at planning
    Column("profile", String(255), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("release", BigInteger, nullable=False, default=0),
    Column("previous_release", BigInteger, nullable=False, default=0),
    Column("previous_model", String(320), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("figures", Text, nullable=False, default="{}"),
    Column("assigned_at_ms", BigInteger, nullable=False, default=0),
    Column("updated_at_ms", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("rollout_id", "device_id", name="pk_rollout_devices"),
    Index("ix_rollout_devices_device", "device_id"),
)

rollout_events = Table(
    "rollout_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(64), ForeignKey("rollouts.id"), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_rollout_events_rollout", "rollout_id", "id"),
)
