"""Checks of the bytes the controller delivers against the sha256 the registry recorded.

``deliverable_files``: a variant's files as blobs, each checked (for a release). ``verify``:
every variant's files in the registry and every stored blob (for `slmops models verify` and,
by size only, at controller start). Repairs are named, never done in passing: a damaged
registry file means rebuilding its variant, a damaged blob means removing it so that the next
assignment copies it afresh from the registry's checked file.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from agent.delivery.manifest import FileEntry
from controller.delivery.blobs import BlobError, BlobStore, SourceDamaged
from controller.registry import ModelRegistry, VariantRecord
from controller.registry.variant_files import DamagedVariant, check, rebuild_command

log = logging.getLogger(__name__)


def _what(variant: VariantRecord) -> str:
    return f"the {variant.profile} variant of {variant.model_ref}"


def deliverable_files(registry: ModelRegistry, blobs: BlobStore,
                      variant: VariantRecord) -> list[FileEntry]:
    """The variant's recorded files, stored as checked blobs, as manifest entries. Raises
    BlobError or DamagedVariant whose message names the damaged file and the repair."""
    files = registry.variant_files(variant)
    try:
        return blobs.ingest(registry.variant_path(variant), files, _what(variant))
    except SourceDamaged as e:
        raise BlobError(f"{e}; rebuild the variant with `{rebuild_command(variant)}`") from None


@dataclass(frozen=True)
class Problem:
    kind: str  # "variant" (a registry file) or "blob"
    path: str  # the file on disk
    variant: str  # "NAME:VERSION PROFILE" ("" for a blob)
    file: str  # the file's path in its variant ("" for a blob)
    problem: str  # "missing", "size", "sha256", "unrecorded", "name"
    repair: str  # the command that repairs it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify(registry: ModelRegistry, blobs: BlobStore, *, full: bool = True) -> dict[str, Any]:
    """Every variant's files against their recorded size (and sha256 with ``full``), and with
    ``full`` every blob against its name. {"ok", "variants", "files", "blobs", "problems"}."""
    problems: list[Problem] = []
    variants = registry.all_variants()
    checked_files = 0
    for variant in variants:
        where = f"{variant.model_ref} {variant.profile}"
        directory = registry.variant_path(variant)
        try:
            files = registry.variant_files(variant)
        except (DamagedVariant, OSError) as e:
            problems.append(Problem("variant", str(directory), where, "", "unrecorded",
                                    f"{rebuild_command(variant)}  # {e}"))
            continue
        for file in files:
            checked_files += 1
            wrong = check(directory, file, full=full)
            if wrong:
                problems.append(Problem("variant", str(directory / file.path), where, file.path,
                                        wrong, rebuild_command(variant)))
    blob_count = 0
    if full:
        for blob, wrong in blobs.damaged():
            problems.append(Problem("blob", str(blob), "", "", "name" if "named" in wrong else "sha256",
                                    f"rm {blob}  # the next assignment copies it afresh"))
        blob_count = blobs.count()
    return {"ok": not problems, "full": full, "variants": len(variants), "files": checked_files,
            "blobs": blob_count, "problems": [p.to_json() for p in problems]}


def log_damaged(registry: ModelRegistry, blobs: BlobStore) -> None:
    """At controller start: the cheap check (sizes of every variant's files), logged."""
    try:
        report = verify(registry, blobs, full=False)
    except Exception:
        log.exception("the start-up check of the registry's variant files failed")
        return
    for p in report["problems"]:
        log.warning("damaged model file: %s (%s of %s): %s; repair: %s", p["path"], p["file"] or "?",
                    p["variant"], p["problem"], p["repair"])
    if report["problems"]:
        log.warning("%d damaged model files; `slmops models verify` checks every byte",
                    len(report["problems"]))
