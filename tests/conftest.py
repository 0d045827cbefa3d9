"""Every test gets its own vitinit cache folder: conversions record source hashes there
(vitinit.io.hash_cache), and no test may read or write the user's ~/.cache/vitinit."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_vitinit_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path_factory.mktemp("vitinit-cache")))
