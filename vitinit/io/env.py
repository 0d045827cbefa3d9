"""Yes/no switches read from the environment, one reading for all of them (``VITINIT_OFFLINE``,
``VITINIT_HASH_CACHE``, ``VITINIT_HUB_XET``, huggingface_hub's ``HF_HUB_OFFLINE``)."""

from __future__ import annotations

import os

YES = frozenset({"1", "true", "yes", "on"})
NO = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> bool:
    """``$name`` as a switch: a yes or a no (any case, spaces around ignored); ``default`` when it is
    unset or says neither."""
    value = os.environ.get(name, "").strip().lower()
    return True if value in YES else False if value in NO else default
