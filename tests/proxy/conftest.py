"""Fixtures of the proxy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.proxy_helpers import SparseDisk, make_sparse_disk


@pytest.fixture
def sparse_disk(tmp_path: Path) -> SparseDisk:
    return make_sparse_disk(tmp_path)
