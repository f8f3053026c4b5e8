"""Outlook's conversation headers: Thread-Topic and Thread-Index for an incident's thread.

Gmail and Thunderbird thread by References/In-Reply-To (Gmail also wants the same subject,
prefixes like "Re:" aside). Outlook groups internet mail by Thread-Index instead: a 22-byte
header block (a time and a GUID) shared by every message of the conversation, followed by
one 5-byte child block per message after the first ([MS-OXOMSG] PidTagConversationIndex).
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone

from .clock import as_utc

_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)  # FILETIME counts 100 ns from here


def _filetime(at: datetime) -> int:
    delta = as_utc(at) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def thread_index(conversation: str, started: datetime, at: datetime) -> str:
    """The Thread-Index of a message sent `at` in the conversation begun at `started`.

    The header block is the same for every message (the start time's top 48 bits of
    FILETIME, whose first byte is the reserved 0x01 for any date after 1665, and a GUID
    derived from `conversation`); a message after the start adds the child block Outlook
    orders it by: the time since the start, in the 31-bit form for less than ~1 year.
    """
    head_time = _filetime(started) >> 16
    guid = uuid.uuid5(uuid.NAMESPACE_URL, f"mailflow:{conversation}").bytes
    block = head_time.to_bytes(6, "big") + guid
    if as_utc(at) > as_utc(started):  # the start itself is the conversation's head
        delta = _filetime(at) - (head_time << 16)
        # Code bit 0: the high 15 bits and low 18 bits of the difference are dropped; the
        # last byte (random and sequence nibbles in Outlook's own) stays 0: deterministic.
        child = ((delta >> 18) & 0x7FFFFFFF) << 8
        block += child.to_bytes(5, "big")
    return base64.b64encode(block).decode("ascii")


def conversation_headers(conversation: str, topic: str, started: datetime,
                         at: datetime) -> list[tuple[str, str]]:
    """Thread-Topic (the stable subject, no prefix) and Thread-Index for one message."""
    return [("Thread-Topic", topic), ("Thread-Index", thread_index(conversation, started, at))]
