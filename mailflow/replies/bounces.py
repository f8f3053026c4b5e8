"""Auto replies and bounces (RFC 3834, RFC 3464): recognised, and whom a bounce is about."""

from __future__ import annotations

import re
from email.message import Message

from ..addresses import normalise
from .headers import _COMMENT, _header, _one_line, _raw_header_values
from .limits import MAX_PARTS
from .mime import _content_type, _param, _part_text

# --- auto replies and bounces ---


def _header_token(value: str) -> str:
    """The keyword of a structured header: `no (sent by hand); x=y` -> `no` (RFC 3834 CFWS)."""
    for _ in range(3):  # nested comments, innermost first
        value = _COMMENT.sub(" ", value)
    return value.split(";", 1)[0].strip().lower()


def _classify(
    msg: Message | None, envelope_from: str | None, sender: str
) -> tuple[bool, bool, str]:
    """(is_auto_reply, is_bounce, reason). Bounces first: a bounce is not an auto reply."""
    ctype = _content_type(msg) if msg is not None else ""
    report_type = _param(msg, "report-type") if msg is not None else ""
    if ctype == "multipart/report" and report_type == "delivery-status":
        return False, True, "Content-Type: multipart/report; report-type=delivery-status"
    failed = _raw_header_values(msg, "x-failed-recipients")
    if failed:
        return False, True, _one_line(f"X-Failed-Recipients: {failed[0]}", 200)
    if sender.partition("@")[0] == "mailer-daemon":
        return False, True, _one_line(f"From: {sender}", 200)

    for value in _raw_header_values(msg, "auto-submitted"):
        token = _header_token(value)
        if token != "no":  # RFC 3834: anything but "no" is machine-generated
            return True, False, _one_line(f"Auto-Submitted: {token}", 200)
    # Vacation responders that predate RFC 3834. X-Auto-Response-Suppress is deliberately
    # absent: it is set by senders asking *others* not to auto-reply.
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoreply-From", "X-Mail-Autoreply"):
        for value in _raw_header_values(msg, name.lower()):
            if value.strip().lower() not in ("no", "false", "0"):
                return True, False, _one_line(f"{name}: {value.strip()}", 200)
    for value in _raw_header_values(msg, "precedence"):
        token = _header_token(value)
        if token in ("bulk", "junk", "auto_reply"):  # not "list": people reply through lists
            return True, False, f"Precedence: {token}"
    if ctype == "multipart/report":  # read receipts (disposition-notification) and the like
        return (
            True,
            False,
            _one_line(f"Content-Type: multipart/report; report-type={report_type}", 200),
        )
    if envelope_from is not None:
        if envelope_from.strip() in ("", "<>"):
            return True, False, "empty envelope sender (MAIL FROM:<>)"
    elif any(v.strip() == "<>" for v in _raw_header_values(msg, "return-path")):
        # Read back from a mailbox: the delivering MTA recorded the empty envelope sender here.
        return True, False, "Return-Path: <>"
    return False, False, ""


_DSN_FIELD = re.compile(r"^([A-Za-z-]+)[ \t]*:[ \t]*(.*)$", re.M)


def _dsn_address(value: str) -> str:
    """`rfc822; gone@example.org` -> `gone@example.org`."""
    return normalise(value.split(";", 1)[-1])


def _dsn_recipients(part: Message, reasons: list[str] | None = None) -> list[str]:
    """Failed recipients of one message/delivery-status part (per-recipient blocks).

    `reasons`, when given, receives each failure's Status and Diagnostic-Code (RFC 3464).
    """
    blocks: list[dict[str, str]] = []
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                fields = {}
                for name in ("final-recipient", "original-recipient", "action", "status",
                             "diagnostic-code"):
                    value = _header(block, name)
                    if value:
                        fields[name] = value
                blocks.append(fields)
    if not any("final-recipient" in b or "original-recipient" in b for b in blocks):
        # Not parsed into blocks (e.g. transfer-encoded): read the fields from the text.
        blocks = []
        for chunk in re.split(r"\n\s*\n", _part_text(part)):
            fields = {}
            for m in _DSN_FIELD.finditer(chunk):
                fields.setdefault(m.group(1).lower(), m.group(2).strip())
            blocks.append(fields)
    found = []
    for fields in blocks:
        action = fields.get("action", "failed").split(";", 1)[0].strip().lower()
        if action != "failed":  # delayed / delivered / relayed are not failures
            continue
        for name in ("final-recipient", "original-recipient"):
            address = _dsn_address(fields.get(name, ""))
            if address:
                found.append(address)
        if reasons is not None:
            status = fields.get("status", "").strip()
            diagnostic = " ".join(fields.get("diagnostic-code", "").split())
            said = "; ".join(x for x in (f"status {status}" if status else "", diagnostic) if x)
            if said:
                reasons.append(_one_line(said, 300))
    return found


def _bounced_recipients(msg: Message | None,
                        reasons: list[str] | None = None) -> tuple[str, ...]:
    """Failed recipients named by the DSN parts and X-Failed-Recipients, deduplicated."""
    found: list[str] = []
    if msg is not None:
        stack = [msg]
        visited = 0
        while stack and visited < MAX_PARTS:
            part = stack.pop()
            visited += 1
            ctype = _content_type(part)
            if ctype == "message/delivery-status":
                found.extend(_dsn_recipients(part, reasons))
                continue
            if ctype.startswith("message/") or ctype == "text/rfc822-headers":
                continue  # the returned original names its own recipients, not the failed ones
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        for value in _raw_header_values(msg, "x-failed-recipients"):
            for item in value.split(","):
                address = normalise(item)
                if address:
                    found.append(address)
    return tuple(dict.fromkeys(found))
