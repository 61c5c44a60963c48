"""Unique, valid Kubernetes names for objects that tests create.

Owns only the naming rule: DNS-1123 labels of at most 40 characters with a random 6-hex
suffix, so names from different tests and runs never collide and stay short enough to be
embedded in derived names (labels, PVs, Jobs). It creates no objects.
"""

from __future__ import annotations

import re
import secrets

MAX_LENGTH = 40
_SUFFIX_LENGTH = 6
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")


def unique_name(prefix: str) -> str:
    """Return `<prefix>-<6 hex>`: lowercase, DNS-1123 label, at most 40 characters.

    Characters outside [a-z0-9-] become dashes; a prefix that is empty after cleaning becomes
    "test"; a long prefix is cut so the suffix always fits.
    """
    cleaned = _NOT_ALLOWED.sub("-", prefix.lower()).strip("-")
    room = MAX_LENGTH - _SUFFIX_LENGTH - 1
    cleaned = cleaned[:room].rstrip("-") or "test"
    return f"{cleaned}-{secrets.token_hex(_SUFFIX_LENGTH // 2)}"
