"""Shared test fixtures."""
from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """The folder of real data files (``../shared/data`` from the repository root)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"
