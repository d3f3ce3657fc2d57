"""Authentication of repository metadata (the config, disk maps, staged map entries).

In an encrypted repository every map and the config carry a keyed BLAKE3 tag under
the *metadata key*, derived from the repository's data key and id key with BLAKE3's
key derivation (its own context string: neither key is used as is). Without the
passphrase nobody can make a map or config that passes. In an unencrypted
repository the same tag is unkeyed: it finds bit rot and misplaced files, not a
forger (who can recompute it). Every tag is bound to where its object belongs
(repository id, VM, point, disk), so a valid map moved elsewhere fails too.
"""

from __future__ import annotations

import hmac

import blake3

from repository.keyfile import RepoKeys

META_KEY_CONTEXT = "vmbackup 2026-12 repository metadata authentication key v2"
MAP_CONTEXT = b"vmbackup-map-v2\0"
PART_CONTEXT = b"vmbackup-commit-part-v2\0"
TASK_CONTEXT = b"vmbackup-task-entries-v1\0"
CONFIG_CONTEXT = b"vmbackup-config-v2\0"
TAG_LEN = 32


def derive_meta_key(keys: RepoKeys) -> bytes:
    return blake3.blake3(keys.enc_key + keys.id_key, derive_key_context=META_KEY_CONTEXT).digest()


class MetaAuth:
    """Makes and checks metadata tags of one repository (keyed when ``key`` is set)."""

    __slots__ = ("_key", "repo_id")

    def __init__(self, repo_id: str, key: bytes | None) -> None:
        self.repo_id = repo_id
        self._key = key

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never the key
        return f"MetaAuth(repo_id={self.repo_id!r}, keyed={self.keyed})"

    def _hasher(self) -> blake3.blake3:
        if self._key is None:
            return blake3.blake3(max_threads=1)
        return blake3.blake3(key=self._key, max_threads=1)

    def map_tag(
        self,
        vm_uuid: str,
        point_id: str,
        disk_key: int,
        header: bytes,
        entries: bytes | bytearray | memoryview,
    ) -> bytes:
        """Tag of a map: its place (repository, VM, point, disk), header and entries."""
        h = self._hasher()
        h.update(MAP_CONTEXT)
        h.update(f"{self.repo_id}\0{vm_uuid}\0{point_id}\0{disk_key}\0".encode())
        h.update(header)
        h.update(entries)
        return h.digest()

    def part_tag(self, request_dir: str, disk_key: int, part: int, packed: bytes) -> bytes:
        """Tag of a staged commit part: its request, disk, number and packed entries."""
        h = self._hasher()
        h.update(PART_CONTEXT)
        h.update(f"{self.repo_id}\0{request_dir}\0{disk_key}\0{part}\0".encode())
        h.update(packed)
        return h.digest()

    def task_tag(self, job_dir: str, disk_key: int, task_id: str, packed: bytes) -> bytes:
        """Tag of a task's staged map entries: its job and VM (``job_dir``), disk, task
        and packed entries."""
        h = self._hasher()
        h.update(TASK_CONTEXT)
        h.update(f"{self.repo_id}\0{job_dir}\0{disk_key}\0{task_id}\0".encode())
        h.update(packed)
        return h.digest()

    def config_tag(self, canonical: bytes) -> bytes:
        """Tag of the canonical config JSON (without its checksum and mac fields)."""
        h = self._hasher()
        h.update(CONFIG_CONTEXT)
        h.update(canonical)
        return h.digest()

    @staticmethod
    def same(a: bytes, b: bytes) -> bool:
        return hmac.compare_digest(a, b)
