from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Tests write tokenizers and cached datasets to their own cache, never the user's ~/.cache/p2pdefense."""
    previous = os.environ.get("P2P_CACHE_DIR")
    os.environ["P2P_CACHE_DIR"] = str(tmp_path_factory.mktemp("p2p-cache"))
    yield
    if previous is None:
        os.environ.pop("P2P_CACHE_DIR", None)
    else:
        os.environ["P2P_CACHE_DIR"] = previous


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
