"""Shared test fixtures.

Two sources of real data:

* ``test_data``: ``tests/data``, shipped with the repository (CC0 atomic models and an MIT-licensed
  CTF table; see ``tests/data/PROVENANCE.md``).  Every test that a fresh clone must pass reads only these.
* ``shared_data``: ``../shared/data`` beside the checkout, real particle images, maps and tables whose
  licences (GPL-3.0, or none stated) do not let them travel with this BSD-licensed repository.  Without
  that folder these tests are skipped with a reason; with ``CRYOSGD_REQUIRE_SHARED=1`` (as in CI) a
  missing folder is a failure, as a missing RELION is with ``CRYOSGD_REQUIRE_RELION=1``.
"""
import os
from pathlib import Path

import pytest

from relion import relion_programs  # noqa: F401  (the one gate for RELION tests)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The data shipped with the tests (``tests/data``)."""
    return Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real files that cannot be shipped (``../shared/data``); skip, or fail in CI, without them."""
    if not SHARED.is_dir():
        message = (f"{SHARED} is not there: these real files (GPL-3.0 or unlicensed) are not shipped "
                   "with the repository")
        if os.environ.get("CRYOSGD_REQUIRE_SHARED") == "1":
            pytest.fail(f"CRYOSGD_REQUIRE_SHARED=1 but {message}", pytrace=False)
        pytest.skip(message)
    return SHARED
