"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Let the tests import the package from src/ when it is not installed.
_SRC = str(REPO / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real test data: $NLA_SHARED_DATA, default <repo>/../shared/data.

    Skips the test when the LPP word annotations (``lpp_annotations/``) are not there.
    """
    root = Path(os.environ.get("NLA_SHARED_DATA", REPO.parent / "shared" / "data"))
    lpp = root / "lpp_annotations"
    if not lpp.is_dir():
        pytest.skip(f"real LPP annotations not found at {lpp}; set NLA_SHARED_DATA")
    return root
