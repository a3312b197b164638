"""Shared test fixtures."""
from pathlib import Path

import pytest

from relion import relion_programs  # noqa: F401  (the one gate for RELION tests)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data files (``../shared/data`` from the repository root)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"

