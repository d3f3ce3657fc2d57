"""What a process loads at start: boto3 (~0.3 s to import) only where S3 is reached,
pyVmomi only where vCenter is.

Every role process, `vmbackup COMMAND` and the test suite's hundreds of subprocesses pay
their imports at each start; a writer on a local directory or `vmbackup --help` must not
pay for the S3 client it does not use (repository/s3_client.make_client imports it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
S3_ONLY = ("boto3", "botocore.config", "s3transfer")
VCENTER_ONLY = ("pyVmomi",)


@pytest.mark.parametrize(
    "entry",
    ["vmbackup.cli", "repository_writer.service", "proxy_worker.service", "repository.gc"],
)
def test_starting_loads_neither_s3_client_nor_pyvmomi(entry: str) -> None:
    heavy = S3_ONLY + VCENTER_ONLY
    probe = f"import sys, {entry}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"importing {entry} loads {out.stdout.strip()}"
