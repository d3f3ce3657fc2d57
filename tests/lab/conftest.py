"""One lab per test module keeps the suite fast; each test logs in afresh."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pyVim.connect import Disconnect

from lab import Lab


@pytest.fixture
def si(lab: Lab) -> Iterator[Any]:
    service_instance = lab.connect()
    yield service_instance
    with contextlib.suppress(Exception):  # the session may have been expired on purpose
        Disconnect(service_instance)
