"""Where a repository is: a local directory, or ``s3://BUCKET/PREFIX`` with an S3 config.

One parser for every entry point (the CLI's ``--repo``/``--s3-config``, the writer's
``repository.path``/``repository.s3_config``, the library's ``Repository.init/open``).
A repository on S3 also has a local cache directory (``cache_dir``): its open packs and
its copy of the index (docs/repository-format.md, "Repository on S3"); by default
``$XDG_CACHE_HOME/vmbackup/<repository id>`` (``~/.cache`` when XDG_CACHE_HOME is unset).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repository.errors import InvalidRequestError
from repository.s3_config import S3Location, load_s3_config

S3_SCHEME = "s3://"
NOTHING_TO_UPGRADE = "a repository on S3 is always format version 3 (packs): nothing to upgrade"


@dataclass(frozen=True)
class RepoLocation:
    text: str  # as given: a path, or s3://BUCKET/PREFIX (for messages)
    local: Path | None = None
    s3: S3Location | None = None


def is_s3(text: str | os.PathLike[str]) -> bool:
    return str(text).startswith(S3_SCHEME)


def parse_location(
    where: str | os.PathLike[str] | RepoLocation, s3_config: str | os.PathLike[str] | None = None
) -> RepoLocation:
    """A local path (``s3_config`` must then be unset) or an ``s3://`` URL (``s3_config``
    required: the endpoint and credentials are never in the URL)."""
    if isinstance(where, RepoLocation):
        return where
    text = str(where)
    if is_s3(text):
        if s3_config is None:
            raise InvalidRequestError(
                f"repository {text}: an s3:// repository needs --s3-config FILE"
                " (endpoint, region, credentials file; docs/object-storage.md)"
            )
        return RepoLocation(text, s3=load_s3_config(Path(s3_config), text))
    if s3_config is not None:
        raise InvalidRequestError(
            f"repository {text}: --s3-config is only for an s3://BUCKET/PREFIX repository"
        )
    return RepoLocation(text, local=Path(text))


def local_only(where: str | os.PathLike[str], what: str, instead: str) -> Path:
    """``where`` as a local directory for ``what``, which works only on one; an
    ``s3://`` location is refused, saying what to do ``instead``."""
    if is_s3(where):
        raise InvalidRequestError(f"{what} is for a local repository, not {where}: {instead}")
    return Path(where)


def default_cache_dir(repo_id: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmbackup" / repo_id
