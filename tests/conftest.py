"""Shared fixtures. Emulator fixtures live in emulator_fixtures.py; database ones in db_fixtures.py."""

from __future__ import annotations

import pytest

pytest_plugins = ["emulator_fixtures", "db_fixtures"]

SOAK_TIMEOUT_S = 4 * 3600  # a soak runs up to ~1M rows or hundreds of seeds; a hang still ends


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("soak") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT_S))
