"""The registry's tables, in SQLAlchemy Core, in the same database as the fleet (own MetaData).

A model version's files live in ``<models_root>/<name>/<version>/``; the row keeps that path
relative to the root, so the root can move. Metrics and lineage are JSON text. A device variant
of a version (one per profile) lives in ``<models_root>/.variants/<name>/<version>/<profile>/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("params", BigInteger, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("lineage", Text, nullable=False, default="{}"),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("job_id", String(64), nullable=False, default=""),
    Column("path", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    PrimaryKeyConstraint("name", "version", name="pk_models"),
    Index("ix_models_job", "job_id"),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("eval_name", String(255), nullable=False),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("job_id", String(64), nullable=False, default=""),
    Index("ix_evaluations_model", "name", "version"),
)

variants = Table(
    "variants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("precision", String(16), nullable=False),
    Column("provider", String(16), nullable=False, default="cpu"),
    Column("runtime", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # passed | failed
    Column("reason", Text, nullable=False, default=""),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("sha256", String(64), nullable=False),
    Column("path", String(255), nullable=False),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("build", Text, nullable=False, default="{}"),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("job_id", String(64), nullable=False, default=""),
    UniqueConstraint("name", "version", "profile", name="uq_variants_model_profile"),
    Index("ix_variants_job", "job_id"),
)

# Every file of a variant as it was when the variant was registered: its path in the variant's
# directory, size and sha256. The truth a release is issued from (controller/delivery/): a file
# whose bytes no longer match is never delivered. Rows of a variant registered before this
# table existed are filled in once, on first use, and only if the files still match the
# variant's recorded digest (registry/variant_files.py).
variant_files = Table(
    "variant_files",
    metadata,
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    PrimaryKeyConstraint("name", "version", "profile", "path", name="pk_variant_files"),
)
