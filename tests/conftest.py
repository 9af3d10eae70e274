"""Markers by tier, so `pytest -m "not host and not browser"` is the fast lane of engine tests.

tests/unit        engine unit tests on tiny modules (no host)
tests/host_unit   the host's own classes imported as a library, tiny real models, no server   -> host
tests/host        a real ComfyUI on 127.0.0.1 driven through its HTTP API                    -> host
tests/browser     the real graph editor in Chromium                                          -> browser
"""
from __future__ import annotations

from pathlib import Path

import pytest

TIERS = {"host_unit": "host", "host": "host", "browser": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        tier = Path(item.path).relative_to(tests_dir).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[tier]))
