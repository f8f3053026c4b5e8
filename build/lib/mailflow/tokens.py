"""Signed reply tokens: `local+<id>-<hmac>@domain` names an incident and cannot be guessed."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

_TOKEN = re.compile(r"^(\d{1,12})-([0-9a-f]{20})$")


def sign(incident_id: int, secret: str) -> str:
    """The token for an incident: its id and an HMAC-SHA256 of it (80 bits shown)."""
    mac = hmac.new(secret.encode(), f"incident:{incident_id}".encode(), hashlib.sha256)
    return f"{incident_id}-{mac.hexdigest()[:20]}"


def verify(token: str, secrets: Iterable[str]) -> int | None:
    """The incident id a token names, if any of `secrets` signed it; compared in constant time."""
    m = _TOKEN.match(token.strip().lower())
    if not m:
        return None
    incident_id = int(m.group(1))
    ok = False
    for secret in secrets:
        # No early exit: every secret is tried, so timing does not tell which one matched.
        ok |= hmac.compare_digest(sign(incident_id, secret), f"{incident_id}-{m.group(2)}")
    return incident_id if ok else None


def reply_address(local: str, domain: str, incident_id: int, secret: str) -> str:
    """The Reply-To address for an incident."""
    return f"{local}+{sign(incident_id, secret)}@{domain}"


def split_address(address: str) -> tuple[str, str | None, str]:
    """`local+token@domain` -> (local, token or None, domain), lowercased."""
    address = address.strip().strip("<>").lower()
    local, _, domain = address.rpartition("@")
    base, plus, token = local.partition("+")
    return base, (token if plus else None), domain
