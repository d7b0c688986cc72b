"""The highest release this device has accepted, kept on disk so it survives a restart.

Release numbers only grow on the controller: every manifest it signs takes a new number, a
rollback included (agent/delivery/manifest.py). The device remembers the highest one it
accepted, and the sha256 of those signed bytes, in ``DATA_DIR/accepted.json``:

    {"format": 1, "release": N, "sha256": "<hex of the manifest bytes>"}

A manifest at or below that release is refused (a replayed manifest or an old bundle); the
same manifest again (its bytes hash the same) is the one already accepted, resumed after a
restart or resent by the controller. The file is written to a temporary name, fsynced and
renamed into place (agent/files.py), so after a crash it holds the old or the new record.

A device that has no file yet (it ran an agent from before this record) starts from the
release its active slot holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from agent.files import write_atomic

log = logging.getLogger(__name__)
ACCEPTED_FILE = "accepted.json"
FORMAT = 1


class AcceptedRelease:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / ACCEPTED_FILE
        self.release, self._sha256 = self._load()

    def _load(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, ""
        try:
            data = json.loads(self.path.read_bytes())
            release, sha = data["release"], data["sha256"]
            if data.get("format") != FORMAT or not isinstance(release, int) or isinstance(release, bool) \
                    or release < 0 or not isinstance(sha, str):
                raise ValueError(f"not an accepted-release record of format {FORMAT}")
            return release, sha
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Not fatal: the floor then comes from the active slot (the caller's fallback), and
            # the next accepted manifest rewrites the file.
            log.error("%s is unreadable (%s); the highest accepted release is taken from the "
                      "active slot until the next release is accepted", self.path, e)
            return 0, ""

    def floor(self, active_release: int) -> int:
        """The release a new manifest must be above: the recorded one, or the active slot's."""
        return max(self.release, active_release)

    def is_accepted(self, release: int, manifest_json: bytes) -> bool:
        """Whether these are exactly the signed bytes recorded as accepted."""
        return release == self.release and hashlib.sha256(manifest_json).hexdigest() == self._sha256

    def record(self, release: int, manifest_json: bytes) -> None:
        """Remember ``release`` (never lowers the record)."""
        if release < self.release or self.is_accepted(release, manifest_json):
            return
        sha = hashlib.sha256(manifest_json).hexdigest()
        write_atomic(self.path, json.dumps({"format": FORMAT, "release": release,
                                            "sha256": sha}).encode())
        self.release, self._sha256 = release, sha
