"""``[policies.copy]``: a policy's second copy after each of its jobs (coordinator/
copy_after_job.py), into a local directory or an ``s3://BUCKET/PREFIX`` repository."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Secret
from common.config_problems import Checks
from common.settings import doc


@dataclass
class CopySettings:
    """A second copy of the policy's points (docs/operations.md "Second copy"): after each
    of the policy's jobs the coordinator copies the policy's points that the repository
    at ``to`` lacks (`vmbackup repo copy --policy NAME`). Empty ``to`` = no copy."""

    to: str = doc(
        "target repository directory (created with `vmbackup repo init`, the same chunk"
        " size), writable by the coordinator, or s3://BUCKET/PREFIX with s3_config;"
        " empty = no copy",
        default="",
    )
    passphrase: Secret | None = doc(
        'passphrase of an encrypted target: {file = "PATH"}, {env = "NAME"}', default=None
    )
    s3_config: str = doc(
        "for an s3:// target: its S3 config file (endpoint, region, credentials;"
        " docs/object-storage.md)",
        default="",
    )
    cache_dir: str = doc(
        "for an s3:// target: its local cache, on a durable disk (open packs a killed"
        " copy left are uploaded from it); empty = $XDG_CACHE_HOME/vmbackup/<its id>",
        default="",
    )

    def __post_init__(self) -> None:
        c = Checks()
        s3 = self.to.startswith("s3://")
        if self.to and not s3 and not self.to.startswith("/"):
            c.fail("to", f"{self.to!r} must be an absolute path or s3://BUCKET/PREFIX")
        if s3 and not self.s3_config:
            c.fail("s3_config", f"to = {self.to!r} is on S3: its S3 config file is needed")
        for key in ("s3_config", "cache_dir"):
            value = getattr(self, key)
            if value and not s3:
                c.fail(key, f"{value!r}: only for an s3://BUCKET/PREFIX target (to)")
            elif value and not value.startswith("/"):
                c.fail(key, f"{value!r} must be an absolute path")
        c.done()

    @property
    def enabled(self) -> bool:
        return bool(self.to)
