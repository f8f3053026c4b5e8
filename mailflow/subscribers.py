"""Email subscribers of a service's external status updates: double opt-in, one-click out.

"subscribe learn" to the base address queues a confirmation email; replying to it (its
subject carries a signed token) activates the subscription. "unsubscribe learn" works the
same way. Every email to a subscriber carries `List-Id` and `List-Unsubscribe`: a `mailto:`
whose subject holds a signed token (acted on at once), and with `[http]` enabled the
RFC 8058 one-click POST URL. An unsubscribed address is only ever active again after a new
confirmation from its own mailbox.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING
from urllib.parse import quote

from .errors import InvalidInput, MailflowError
from .models import Incident, InMessage, StatusUpdate, Subscriber
from .render import one_line

if TYPE_CHECKING:
    from .app import Mailflow
    from .posting import Outcome
    from .replies import Reply

_ASK = re.compile(r"^\s*(subscribe|unsubscribe)\b\s*([\w.-]*)\s*$", re.I)
_TOKEN = re.compile(r"\b(confirm|unsubscribe)[- ]([0-9]{1,12})-([0-9a-f]{24})\b", re.I)
ACTIONS = ("confirm", "unsubscribe", "unsubscribe-confirm")
RESEND_AFTER = timedelta(hours=1)


def token(subscriber_id: int, action: str, secret: str) -> str:
    """`<id>-<hmac>`: proves the holder got an email at the subscriber's address."""
    mac = hmac.new(secret.encode(), f"subscriber:{action}:{subscriber_id}".encode(),
                   hashlib.sha256).hexdigest()[:24]
    return f"{subscriber_id}-{mac}"


def check_token(app: Mailflow, value: str, action: str, now: datetime) -> Subscriber | None:
    """The subscriber a token names, if one of our secrets signed it for `action`."""
    m = re.fullmatch(r"([0-9]{1,12})-([0-9a-f]{24})", value.strip().lower())
    if not m:
        return None
    sid = int(m.group(1))
    ok = False
    for secret in app.config.secrets(now):
        ok |= hmac.compare_digest(token(sid, action, secret), value.strip().lower())
    return Subscriber.get_or_none(Subscriber.id == sid) if ok else None


def _queue(app: Mailflow, to: str, subject: str, body: str, now: datetime,
           headers: dict[str, str] | None = None, incident: Incident | None = None,
           kind: str = "subscription") -> None:
    """Queue one plain-text email through the outbox (durable, retried like the rest)."""
    cfg = app.config
    msg = EmailMessage(policy=SMTP)
    msg["From"] = cfg.sender
    msg["To"] = to
    msg["Reply-To"] = cfg.reply_to
    msg["Subject"] = one_line(subject)
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(domain=cfg.reply_domain)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders stay quiet
    for key, value in (headers or {}).items():
        msg[key] = one_line(value)
    msg.set_content(body)
    # Confirmations answer a request: null envelope sender, as for any auto-reply. Updates
    # bounce back to the base address, where bounces are recognised and dropped.
    envelope_from = cfg.reply_to if kind == "subscriber" else ""
    app.outbox.enqueue(incident.id if incident is not None else None, kind, envelope_from,
                       [(to, message_id, msg.as_bytes())], now)


def request(app: Mailflow, email: str, service: str, now: datetime) -> Subscriber:
    """Start a subscription: pending until the confirmation email is answered."""
    svc = app.contacts.service(service)
    email = email.strip().lower()
    sub, created = Subscriber.get_or_create(email=email, service=svc.key,
                                            defaults={"requested_at": now})
    if sub.status == "active":
        return sub
    if sub.status == "pending" and not created and now - sub.requested_at < RESEND_AFTER:
        return sub  # one confirmation an hour: a forged From cannot flood a mailbox
    sub.status, sub.requested_at = "pending", now
    sub.save()
    t = token(sub.id, "confirm", app.config.secret)
    _queue(app, email, f"Confirm your subscription to {svc.title} [confirm {t}]",
           f"Someone (we hope you) asked for the status updates of {svc.title} at this "
           "address.\n\nReply to this email to confirm (the subject must keep the code in "
           "brackets). If it was not you, ignore it: nothing will be sent.\n", now)
    return sub


def confirm(app: Mailflow, sub: Subscriber, now: datetime) -> None:
    """The mailbox answered: the subscription is active."""
    sub.status, sub.confirmed_at, sub.unsubscribed_at = "active", now, None
    sub.save()


def unsubscribe(app: Mailflow, sub: Subscriber, now: datetime) -> None:
    """Takes effect at once; only a new confirmed subscription undoes it."""
    sub.status, sub.unsubscribed_at = "unsubscribed", now
    sub.save()


def unsubscribe_token(app: Mailflow, value: str, now: datetime) -> str:
    """The one-click POST and the `mailto:` both end here; returns what was left ("" if none)."""
    with app.db.atomic("IMMEDIATE"):
        sub = check_token(app, value, "unsubscribe", now)
        if sub is None:
            raise InvalidInput("unsubscribe: the link is not valid (copy it whole from the email)")
        if sub.status == "unsubscribed":
            return ""
        unsubscribe(app, sub, now)
        return f"{sub.email} from {sub.service}"


def accept_base(app: Mailflow, reply: Reply, raw: bytes, mail_from: str,
                now: datetime) -> Outcome | None:
    """`subscribe learn`, `unsubscribe learn` or a confirmation to the base address; else None."""
    from .posting import Outcome

    subject = reply.subject or ""
    first = next((line for line in reply.text.split("\n") if line.strip()), "")
    m = _TOKEN.search(subject)
    ask = _ASK.match(first) or _ASK.match(subject)
    if not m and not ask:
        return None
    if reply.is_auto_reply or reply.is_bounce or not reply.sender:
        return Outcome(250, "2.0.0 auto-reply ignored", "auto-reply")
    from .receipts import _ours
    if _ours(app, reply.sender):
        # A forged "subscribe" from our own address would confirm itself by mail.
        return Outcome(250, "2.0.0 mailflow's own address cannot subscribe", "refused")
    with app.db.atomic("IMMEDIATE"):
        if m:
            action = m.group(1).lower()
            value = f"{m.group(2)}-{m.group(3).lower()}"
            if action == "confirm":
                sub = check_token(app, value, "confirm", now)
                if sub is not None:
                    confirm(app, sub, now)
                    result = Outcome(250, "2.0.0 subscription confirmed", "subscribed")
                else:
                    sub = check_token(app, value, "unsubscribe-confirm", now)
                    if sub is not None:
                        unsubscribe(app, sub, now)
                        result = Outcome(250, "2.0.0 unsubscribed", "unsubscribed")
                    else:
                        result = Outcome(250, "2.0.0 unknown confirmation code", "note")
            else:
                sub = check_token(app, value, "unsubscribe", now)
                if sub is not None:
                    unsubscribe(app, sub, now)
                    result = Outcome(250, "2.0.0 unsubscribed", "unsubscribed")
                else:
                    result = Outcome(250, "2.0.0 unknown unsubscribe code", "note")
        elif ask is not None:
            verb, service = ask.group(1).lower(), ask.group(2)
            try:
                if verb == "subscribe":
                    request(app, reply.sender, service, now)
                    result = Outcome(250, "2.0.0 confirmation sent", "subscription requested")
                else:
                    result = _ask_unsubscribe(app, reply.sender, service, now)
            except MailflowError as exc:
                _queue(app, reply.sender, "Not subscribed",
                       f"{exc}.\n\nWrite `subscribe SERVICE` in the subject or first line; "
                       f"services: {', '.join(sorted(app.contacts.services))}.\n", now)
                result = Outcome(250, f"2.0.0 not subscribed: {exc}", "note")
        InMessage.create(incident=None, received_at=now, mail_from=mail_from,
                         sender=reply.sender, message_id=reply.message_id, content=raw,
                         outcome=result.outcome)
    return result


def _ask_unsubscribe(app: Mailflow, email: str, service: str, now: datetime) -> Outcome:
    from .posting import Outcome

    q = Subscriber.select().where((Subscriber.email == email)
                                  & (Subscriber.status != "unsubscribed"))
    if service:
        q = q.where(Subscriber.service == service)
    subs = list(q)
    if InMessage.select().where(
            (InMessage.sender == email) & (InMessage.outcome == "unsubscribe requested")
            & (InMessage.received_at > now - RESEND_AFTER)).exists():
        # One question an hour, as for subscribing: a forged From cannot flood a mailbox.
        return Outcome(250, "2.0.0 a confirmation was sent within the hour", "note")
    for sub in subs:
        # A From line can be forged: the mailbox itself confirms, as for subscribing.
        t = token(sub.id, "unsubscribe-confirm", app.config.secret)
        _queue(app, email, f"Confirm: stop the {sub.service} status updates [confirm {t}]",
               "Reply to this email to stop receiving these status updates.\n", now)
    return Outcome(250, f"2.0.0 {len(subs)} confirmation(s) sent", "unsubscribe requested")


def list_headers(app: Mailflow, sub: Subscriber) -> dict[str, str]:
    """`List-Id`, `List-Unsubscribe` (mailto + one-click URL) and `List-Unsubscribe-Post`."""
    cfg = app.config
    t = token(sub.id, "unsubscribe", cfg.secret)
    links = [f"<mailto:{cfg.reply_to}?subject={quote(f'unsubscribe {t}')}>"]
    headers = {"List-Id": f"{sub.service} status <{sub.service}.status.{cfg.reply_domain}>"}
    if cfg.http.enabled:
        base = cfg.http.public_url or f"http://{cfg.http.host}:{cfg.http.port}"
        links.insert(0, f"<{base}/unsubscribe/{t}>")
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    headers["List-Unsubscribe"] = ", ".join(links)
    return headers


def notify(app: Mailflow, incident: Incident, update: StatusUpdate, now: datetime) -> int:
    """A published update goes to the service's active subscribers; returns how many."""
    subs = list(Subscriber.select().where((Subscriber.service == incident.service)
                                          & (Subscriber.status == "active")))
    for sub in subs:
        scope = "complete downtime" if incident.impact == "outage" else "degraded"
        _queue(app, sub.email, f"{incident.service_title}: {update.status} ({incident.ref})",
               f"{incident.service_title} — {scope} — {update.status}\n\n"
               f"{update.public_text}\n\n--\nYou receive this because you subscribed to the "
               f"status updates of {incident.service_title}. To stop, use your mail client's "
               "unsubscribe button or reply with `unsubscribe`.\n",
               now, headers=list_headers(app, sub), incident=incident, kind="subscriber")
    return len(subs)


def import_addresses(app: Mailflow, service: str, addresses: list[str],
                     now: datetime) -> tuple[int, list[str]]:
    """Add an existing list as active subscribers; (added, skipped because unsubscribed).

    The operator vouches for these addresses, so there is no confirmation; but an address
    that unsubscribed stays out: only its own new confirmation brings it back.
    """
    from .addresses import normalise, problem, rules_of

    svc = app.contacts.service(service)
    added, skipped = 0, []
    with app.db.atomic("IMMEDIATE"):
        for number, raw in enumerate(addresses, start=1):
            email = normalise(raw.strip()) if raw.strip() else ""
            if not raw.strip() or raw.strip().startswith("#"):
                continue
            why = problem(email, rules_of(app.config)) if email else "not an email address"
            if why:
                raise InvalidInput(f"line {number}: {raw.strip()!r}: {why}; nothing was imported")
            sub, created = Subscriber.get_or_create(
                email=email, service=svc.key,
                defaults={"requested_at": now, "status": "active", "confirmed_at": now})
            if created:
                added += 1
            elif sub.status == "unsubscribed":
                skipped.append(email)
            elif sub.status == "pending":
                sub.status, sub.confirmed_at = "active", now
                sub.save()
                added += 1
    return added, skipped


def listing(service: str | None = None) -> list[Subscriber]:
    """Subscribers, by service then address."""
    q = Subscriber.select()
    if service:
        q = q.where(Subscriber.service == service)
    return list(q.order_by(Subscriber.service, Subscriber.email))
