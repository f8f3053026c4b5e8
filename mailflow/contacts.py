"""contacts.yaml → typed people, lists and services; validation with `file:line:`; safe edits."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from . import clock
from .addresses import STRICT, Rules, is_valid, lookup_key, problem
from .config import SEVERITIES
from .errors import ContactsError, InvalidInput, NotFound
from .hours import DEFAULT_HOLD_MILESTONES, WorkingHours, parse_days, parse_hours

__all__ = [
    "Contacts",
    "ContactsFile",
    "Person",
    "Service",
    "Vendor",
    "empty_contacts",
    "is_address",
    "load_contacts",
    "parse_contacts",
]


_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_KINDS = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true/false",
    "tag:yaml.org,2002:timestamp": "a date",
}

_TOP_KEYS = ("people", "lists", "services", "working_hours", "vendors")
_PERSON_KEYS = ("name", "email", "expertise", "timezone", "commands")
_SERVICE_KEYS = ("title", "notify", "escalate", "expertise", "oncall")
AUDIENCES = ("all", "milestones")
_AUDIENCE_KEYS = ("gets", "hold")
_HOURS_KEYS = ("hours", "days", "timezone")
_VENDOR_KEYS = ("name", "services", "ticket", "escalate")


def is_address(text: str, rules: Rules = STRICT) -> bool:
    """True for a plain address that delivery accepts (see mailflow.addresses)."""
    return is_valid(text, rules)


def _invalid(text: str, rules: Rules) -> str:
    """`'x' is not a valid email address: why (write e.g. ana@example.org)`."""
    why = problem(text, rules) or "write it as name@example.org"
    return f"{text!r} is not a valid email address: {why} (write e.g. ana@example.org)"


@dataclass(frozen=True)
class Person:
    """Someone in the directory; `email` is kept as written, lookups ignore its case."""

    name: str
    email: str
    expertise: tuple[str, ...] = ()
    timezone: str | None = None
    # False: may add text to incidents but not change them (unless given a role).
    commands: bool = True


@dataclass(frozen=True)
class Service:
    """A service incidents are declared against: who hears about it and who gets escalations."""

    key: str
    title: str
    notify: tuple[str, ...]
    escalate: tuple[tuple[timedelta, tuple[str, ...]], ...]
    expertise: tuple[str, ...] = ()
    # People on call, in order: the first is the lead when a declaration names none;
    # an alert that nobody takes goes to the next one.
    oncall: tuple[str, ...] = ()
    # Per notified list: (list, "all" | "milestones", severities held out of working hours).
    # A list missing here gets everything at once.
    audiences: tuple[tuple[str, str, frozenset[str]], ...] = ()

    def gets(self, list_name: str) -> str:
        """"all" (every communication) or "milestones" (start, severity/impact, solved)."""
        return next((a for n, a, _ in self.audiences if n == list_name), "all")

    def held(self, list_name: str) -> frozenset[str]:
        """The severities whose mail to this list waits for working hours."""
        return next((h for n, _, h in self.audiences if n == list_name), frozenset())


@dataclass(frozen=True)
class Vendor:
    """A third party that supports a service: how to open a ticket and how to escalate."""

    name: str
    services: tuple[str, ...]
    ticket: str = ""
    escalate: str = ""


@dataclass(frozen=True)
class Contacts:
    """A validated, immutable contacts.yaml."""

    people: Mapping[str, Person]
    lists: Mapping[str, tuple[str, ...]]
    services: Mapping[str, Service]
    path: Path | None = None
    # Where `lists:` is, so an unknown-list error can still point at a line.
    _lists_line: int = field(default=1, repr=False, compare=False)
    working_hours: WorkingHours = WorkingHours()
    vendors: tuple[Vendor, ...] = ()

    def vendors_of(self, service: str) -> list[Vendor]:
        """The third-party support contacts of a service, in file order."""
        return [v for v in self.vendors if service in v.services]

    @cached_property
    def _listed(self) -> frozenset[str]:
        return frozenset(a.lower() for members in self.lists.values() for a in members)

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "contacts.yaml"

    def person(self, email: str) -> Person | None:
        """The person with this address (any case; "Name <addr>" accepted), or None."""
        return self.people.get(_bare_address(email))

    def expand(self, list_names: Iterable[str]) -> list[str]:
        """Addresses of the named lists, de-duplicated ignoring case, in order of appearance."""
        if isinstance(list_names, str):  # a lone name would otherwise iterate per character
            list_names = (list_names,)
        seen: set[str] = set()
        out: list[str] = []
        for name in list_names:
            members = self.lists.get(name)
            if members is None:
                known = ", ".join(self.lists) or "none defined"
                raise ContactsError(
                    f"{self._where()}:{self._lists_line}: no list named {name!r} "
                    f"(known lists: {known}); add it under `lists:`"
                )
            for address in members:
                if address.lower() not in seen:
                    seen.add(address.lower())
                    out.append(address)
        return out

    def service(self, key: str) -> Service:
        """The service with this key; NotFound names the services that exist."""
        found = self.services.get(key)
        if found is None:
            # Typing `Learn` for `learn` on a command line should not fail.
            matches = [s for k, s in self.services.items() if k.casefold() == key.casefold()]
            if len(matches) == 1:
                return matches[0]
            if self.services:
                known = ", ".join(self.services)
                raise NotFound(f"no service {key!r} in {self._where()}; known services: {known}")
            raise NotFound(
                f"no service {key!r}: {self._where()} defines no services; "
                "add one under `services:`"
            )
        return found

    def knows(self, email: str) -> bool:
        """True if the address belongs to a person or appears in any list."""
        address = _bare_address(email)
        return address in self.people or address in self._listed

    def experts(self, tags: Iterable[str]) -> list[tuple[Person, tuple[str, ...]]]:
        """People with at least one of the tags (any case): most matches first, then by name."""
        if isinstance(tags, str):
            tags = (tags,)
        wanted = {t.casefold() for t in tags}
        found = []
        for person in self.people.values():
            matched = tuple(t for t in person.expertise if t.casefold() in wanted)
            if matched:
                found.append((person, matched))
        found.sort(key=lambda pm: (-len(pm[1]), pm[0].name.casefold(), pm[0].email.lower()))
        return found


def empty_contacts() -> Contacts:
    """Contacts with nobody in them, for running without a contacts file."""
    return Contacts(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


def load_contacts(path: Path | str, rules: Rules = STRICT) -> Contacts:
    """Read and validate a contacts file; any problem is a ContactsError naming the file."""
    path = Path(path)
    return parse_contacts(_read_text(path), path, rules)


def parse_contacts(text: str, path: Path | str = "contacts.yaml",
                   rules: Rules = STRICT) -> Contacts:
    """Validate contacts.yaml text; every problem is reported as `file:line: reason`."""
    where = str(path)
    root = _compose(text, where)
    if root is None:  # empty or comments only: a directory with nobody in it yet
        return Contacts(
            MappingProxyType({}), MappingProxyType({}), MappingProxyType({}), Path(path)
        )
    if not isinstance(root, MappingNode):
        raise ContactsError(
            f"{where}:{_line(root)}: the top level must be a mapping with "
            "`people:`, `lists:` and `services:`"
        )
    check = _Checker(where, rules)
    sections = check.entries(root)
    for key, (key_node, _) in sections.items():
        if key not in _TOP_KEYS:
            check.error(key_node, f"unknown key {key!r}; expected one of: {', '.join(_TOP_KEYS)}")
    people = _parse_people(check, sections.get("people"))
    lists, list_names = _parse_lists(check, sections.get("lists"))
    services = _parse_services(check, sections.get("services"), list_names, people)
    working_hours = _working_hours(check, sections.get("working_hours"))
    service_keys = set(_entries(sections["services"][1])) if "services" in sections else set()
    vendors = _vendors(check, sections.get("vendors"), service_keys)
    check.raise_if_any()
    lists_line = _line(sections["lists"][0]) if "lists" in sections else 1
    return Contacts(
        MappingProxyType(people),
        MappingProxyType(lists),
        MappingProxyType(services),
        Path(path),
        lists_line,
        working_hours=working_hours,
        vendors=vendors,
    )


# --- validation ------------------------------------------------------------------------------


class _Checker:
    """Collects `file:line: reason` problems so one run reports all of them."""

    def __init__(self, where: str, rules: Rules = STRICT) -> None:
        self.where = where
        self.rules = rules  # what delivery accepts: an address it refuses is refused here
        self.errors: list[tuple[int, str]] = []

    def error(self, at: Node | int, reason: str) -> None:
        self.errors.append((at if isinstance(at, int) else _line(at), reason))

    def raise_if_any(self) -> None:
        if self.errors:
            ordered = sorted(self.errors, key=lambda e: e[0])  # stable: same line keeps order
            raise ContactsError("\n".join(f"{self.where}:{ln}: {why}" for ln, why in ordered))

    def entries(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        """Mapping entries by key text; duplicate and non-scalar keys are reported."""
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, "a key must be a plain word, not a list or mapping")
                continue
            key = key_node.value
            if key in out:
                first = _line(out[key][0])
                self.error(key_node, f"duplicate key {key!r} (first given at line {first})")
                continue
            out[key] = (key_node, value_node)
        return out

    def text(self, key_node: Node, node: Node, what: str) -> str | None:
        """A scalar string value, or None after reporting why it is not one."""
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            self.error(key_node, f"{what} is empty")
            return None
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return str(node.value)
        self.error(node, f"{what} must be text, not {_kind(node)}; put it in quotes if needed")
        return None

    def texts(self, key_node: Node, node: Node, what: str, example: str) -> list[tuple[str, Node]]:
        """A list of strings (null counts as empty); each bad item is reported."""
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list, e.g. {example}; got {_kind(node)}")
            return []
        out: list[tuple[str, Node]] = []
        for item in node.value:
            if isinstance(item, ScalarNode) and item.tag == _STR and item.value.strip():
                out.append((str(item.value).strip(), item))
            else:
                self.error(
                    item, f"{what} must be a list of text, e.g. {example}; got {_kind(item)}"
                )
        return out


def _parse_people(check: _Checker, entry: tuple[Node, Node] | None) -> dict[str, Person]:
    people: dict[str, Person] = {}
    if entry is None or _is_null(entry[1]):
        return people
    key_node, node = entry
    if not isinstance(node, SequenceNode):
        check.error(
            node if not _is_null(node) else key_node,
            "`people:` must be a list of people, e.g. - {name: Ana Lima, email: ana@example.org}",
        )
        return people
    first_line: dict[str, tuple[int, str]] = {}
    for item in node.value:
        if not isinstance(item, MappingNode):
            check.error(
                item,
                f"each person must be a mapping like {{name: ..., email: ...}}, not {_kind(item)}",
            )
            continue
        fields = check.entries(item)
        for key, (k, _) in fields.items():
            if key not in _PERSON_KEYS:
                check.error(
                    k, f"unknown key {key!r} for a person; expected: {', '.join(_PERSON_KEYS)}"
                )
        name = _person_name(check, item, fields)
        email = _person_email(check, item, fields, name)
        expertise = _tags(check, fields.get("expertise"))
        tz_ok, timezone = _timezone(check, fields.get("timezone"))
        commands = _commands(check, fields.get("commands"))
        if email is not None:
            where = fields["email"][1]
            seen = first_line.get(email.lower())
            if seen is not None:
                check.error(
                    where, f"duplicate email {email} (already used by {seen[1]} at line {seen[0]})"
                )
                continue
            first_line[email.lower()] = (_line(where), name or email)
        if name is None or email is None or not tz_ok:
            continue
        people[email.lower()] = Person(name, email, expertise, timezone, commands)
    return people


def _person_name(check: _Checker, item: Node, fields: dict[str, tuple[Node, Node]]) -> str | None:
    if "name" not in fields:
        check.error(item, "person has no `name:`")
        return None
    key_node, node = fields["name"]
    name = check.text(key_node, node, "name")
    if name is None:
        return None
    name = name.strip()
    if not name:
        check.error(node, "name is empty")
        return None
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        # Names end up in From/To headers, where a line break would start a new header.
        check.error(node, f"name {name!r} contains a line break or control character")
        return None
    return name


def _person_email(
    check: _Checker, item: Node, fields: dict[str, tuple[Node, Node]], name: str | None
) -> str | None:
    if "email" not in fields:
        check.error(item, f"person {name!r} has no `email:`" if name else "person has no `email:`")
        return None
    key_node, node = fields["email"]
    email = check.text(key_node, node, "email")
    if email is None:
        return None
    if not is_address(email, check.rules):
        check.error(node, _invalid(email, check.rules))
        return None
    return email


def _tags(check: _Checker, entry: tuple[Node, Node] | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    tags = check.texts(entry[0], entry[1], "expertise", "[postgres, backups]")
    return tuple(dict.fromkeys(t for t, _ in tags))


def _commands(check: _Checker, entry: tuple[Node, Node] | None) -> bool:
    """`commands: false`: the person's replies add text but change nothing."""
    if entry is None or _is_null(entry[1]):
        return True
    value = entry[1].value if isinstance(entry[1], ScalarNode) else None
    if not isinstance(value, str) or value.lower() not in ("true", "false", "yes", "no"):
        check.error(entry[1], "`commands:` must be true or false")
        return True
    return value.lower() in ("true", "yes")


def _timezone(check: _Checker, entry: tuple[Node, Node] | None) -> tuple[bool, str | None]:
    """(valid, zone name or None when absent)."""
    if entry is None or _is_null(entry[1]):
        return True, None
    tz = check.text(entry[0], entry[1], "timezone")
    if tz is None:
        return False, None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        check.error(
            entry[1], f"unknown time zone {tz!r}; use an IANA name such as Europe/Zurich or UTC"
        )
        return False, None
    return True, tz


def _parse_lists(
    check: _Checker, entry: tuple[Node, Node] | None
) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    lists: dict[str, tuple[str, ...]] = {}
    names: set[str] = set()  # includes broken lists, so services don't report them twice
    if entry is None or _is_null(entry[1]):
        return lists, names
    key_node, node = entry
    if not isinstance(node, MappingNode):
        check.error(node, "`lists:` must map list names to addresses, e.g. stakeholders: [...]")
        return lists, names
    for name, (k, value) in check.entries(node).items():
        names.add(name)
        if not name.strip():
            check.error(k, "a list needs a name")
            continue
        if _is_null(value):
            lists[name] = ()
            continue
        if not isinstance(value, SequenceNode):
            check.error(
                value,
                f"list {name!r} must be a list of addresses, e.g. [ana@example.org]; "
                f"got {_kind(value)}",
            )
            continue
        members = []
        ok = True
        for item in value.value:
            if not (isinstance(item, ScalarNode) and item.tag == _STR):
                check.error(
                    item, f"list {name!r}: each entry must be an address, not {_kind(item)}"
                )
                ok = False
            elif not is_address(item.value, check.rules):
                check.error(item, f"list {name!r}: {_invalid(item.value, check.rules)}")
                ok = False
            else:
                members.append(str(item.value))
        if ok:
            lists[name] = tuple(members)
    return lists, names


def _parse_services(
    check: _Checker, entry: tuple[Node, Node] | None, list_names: set[str],
    people: Mapping[str, Person],
) -> dict[str, Service]:
    services: dict[str, Service] = {}
    if entry is None or _is_null(entry[1]):
        return services
    node = entry[1]
    if not isinstance(node, MappingNode):
        check.error(node, "`services:` must map service keys to their settings")
        return services
    for key, (k, value) in check.entries(node).items():
        if not isinstance(value, MappingNode):
            check.error(
                value if not _is_null(value) else k,
                f"service {key!r} must be a mapping with title:, notify:, escalate:, expertise:",
            )
            continue
        fields = check.entries(value)
        for field_key, (fk, _) in fields.items():
            if field_key not in _SERVICE_KEYS:
                check.error(
                    fk,
                    f"unknown key {field_key!r} for service {key!r}; "
                    f"expected: {', '.join(_SERVICE_KEYS)}",
                )
        title: str | None = key
        if "title" in fields and not _is_null(fields["title"][1]):
            title = check.text(*fields["title"], "title")
        notify: tuple[str, ...] | None = None
        audiences: tuple[tuple[str, str, frozenset[str]], ...] = ()
        if "notify" not in fields:
            check.error(
                k,
                f"service {key!r} has no `notify:`; name the lists to notify, e.g. [stakeholders]",
            )
        elif isinstance(fields["notify"][1], MappingNode):
            found = _audiences(check, key, fields["notify"][1], list_names)
            if found is not None:
                audiences = found
                notify = tuple(name for name, _, _ in found)
        else:
            notify = _list_refs(check, fields["notify"], f"service {key!r} notify", list_names)
        escalate = _escalate(check, key, fields.get("escalate"), list_names)
        expertise = _tags(check, fields.get("expertise"))
        oncall = _oncall(check, key, fields.get("oncall"), people)
        if title is None or notify is None or escalate is None or oncall is None:
            continue
        services[key] = Service(key, title.strip() or key, notify, escalate, expertise, oncall,
                                audiences)
    return services


def _audiences(check: _Checker, key: str, node: MappingNode, list_names: set[str]
               ) -> tuple[tuple[str, str, frozenset[str]], ...] | None:
    """`notify: {stakeholders: all, learn-users: milestones}`, or per list
    `{gets: milestones, hold: [P2, P3]}`; None after reporting a problem."""
    what = f"service {key!r} notify"
    example = "{stakeholders: all, learn-users: milestones}"
    errors_before = len(check.errors)
    out = []
    entries = check.entries(node)
    if not entries:
        check.error(node, f"{what} names no lists; give at least one, e.g. {example}")
        return None
    known = ", ".join(sorted(list_names)) or "none; define them under `lists:`"
    for name, (k, value) in entries.items():
        if name not in list_names:
            check.error(k, f"{what}: unknown list {name!r} (known lists: {known})")
            continue
        gets_node: Node | None = value
        hold: frozenset[str] | None = None
        if isinstance(value, MappingNode):
            options = check.entries(value)
            for option, (ok, _) in options.items():
                if option not in _AUDIENCE_KEYS:
                    check.error(ok, f"{what} {name}: unknown key {option!r}; expected: "
                                    f"{', '.join(_AUDIENCE_KEYS)} (e.g. {{gets: milestones, "
                                    "hold: [P3]}})")
            gets_node = options["gets"][1] if "gets" in options else None
            if "hold" in options:
                hold = _severities(check, options["hold"], f"{what} {name} hold")
        gets = "all"
        if gets_node is not None and not _is_null(gets_node):
            text = gets_node.value if isinstance(gets_node, ScalarNode) else None
            if not isinstance(text, str) or text.strip().lower() not in AUDIENCES:
                check.error(gets_node, f"{what} {name}: say `all` (every communication) or "
                                       f"`milestones` (start, severity or impact change, "
                                       f"solved), not {_kind(gets_node)}")
                continue
            gets = text.strip().lower()
        if hold is None:
            hold = DEFAULT_HOLD_MILESTONES if gets == "milestones" else frozenset()
        out.append((name, gets, hold))
    if len(check.errors) > errors_before:
        return None
    return tuple(out)


def _severities(check: _Checker, entry: tuple[Node, Node], what: str) -> frozenset[str]:
    """`[P2, P3]` (or nothing: never held)."""
    found = set()
    for text, node in check.texts(entry[0], entry[1], what, "[P2, P3]"):
        sev = text.strip().upper()
        if sev not in SEVERITIES:
            check.error(node, f"{what}: {text!r} is not a severity; use "
                              f"{', '.join(SEVERITIES)}, e.g. hold: [P3]")
            continue
        found.add(sev)
    return frozenset(found)


def _working_hours(check: _Checker, entry: tuple[Node, Node] | None) -> WorkingHours:
    """`working_hours: {hours: 08:00-18:00, days: Mon-Fri, timezone: Europe/Zurich}`."""
    default = WorkingHours()
    if entry is None or _is_null(entry[1]):
        return default
    key_node, node = entry
    example = "{hours: 08:00-18:00, days: Mon-Fri, timezone: Europe/Zurich}"
    if not isinstance(node, MappingNode):
        check.error(node, f"`working_hours:` must be a mapping, e.g. {example}")
        return default
    fields = check.entries(node)
    for name, (k, _) in fields.items():
        if name not in _HOURS_KEYS:
            check.error(k, f"unknown key {name!r} in working_hours; expected: "
                           f"{', '.join(_HOURS_KEYS)}")
    start, end, days, zone = default.start, default.end, default.days, default.timezone
    if "hours" in fields:
        text = check.text(*fields["hours"], "working_hours hours")
        span = parse_hours(text) if text is not None else None
        if text is not None and span is None:
            check.error(fields["hours"][1], f"working_hours hours {text!r}: write the start and "
                                            "end of the day, e.g. 08:00-18:00")
        if span is not None:
            start, end = span
    if "days" in fields:
        text = check.text(*fields["days"], "working_hours days")
        found = parse_days(text) if text is not None else None
        if text is not None and found is None:
            check.error(fields["days"][1], f"working_hours days {text!r}: write e.g. Mon-Fri "
                                           "or Mon,Tue,Thu")
        if found is not None:
            days = found
    if "timezone" in fields:
        ok, tz = _timezone(check, fields["timezone"])
        if ok and tz:
            zone = tz
    return WorkingHours(start, end, days, zone)


def _vendors(check: _Checker, entry: tuple[Node, Node] | None, services: set[str]
             ) -> tuple[Vendor, ...]:
    """`vendors:` — third-party support per service: how to open a ticket, how to escalate."""
    if entry is None or _is_null(entry[1]):
        return ()
    example = ("- {name: Moodle Partner AG, services: [learn], ticket: support@partner.example, "
               "escalate: call +41 44 000 00 00}")
    node = entry[1]
    if not isinstance(node, SequenceNode):
        check.error(node, f"`vendors:` must be a list of vendors, e.g. {example}")
        return ()
    out = []
    for item in node.value:
        if not isinstance(item, MappingNode):
            check.error(item, f"each vendor must be a mapping like {example[2:]}")
            continue
        fields = check.entries(item)
        for name, (k, _) in fields.items():
            if name not in _VENDOR_KEYS:
                check.error(k, f"unknown key {name!r} for a vendor; expected: "
                               f"{', '.join(_VENDOR_KEYS)}")
        if "name" not in fields:
            check.error(item, "vendor has no `name:`")
            continue
        vendor = check.text(*fields["name"], "vendor name")
        if "services" not in fields:
            check.error(item, f"vendor {vendor!r} has no `services:`; name the services it "
                              "supports, e.g. [learn]")
            continue
        refs = check.texts(*fields["services"], f"vendor {vendor!r} services", "[learn]")
        known = ", ".join(sorted(services)) or "none"
        bad = False
        for ref, ref_node in refs:
            if ref not in services:
                check.error(ref_node, f"vendor {vendor!r}: unknown service {ref!r} (known "
                                      f"services: {known})")
                bad = True
        ticket = check.text(*fields["ticket"], "vendor ticket") if "ticket" in fields else ""
        escalate = (check.text(*fields["escalate"], "vendor escalate")
                    if "escalate" in fields else "")
        if vendor is None or ticket is None or escalate is None or bad or not refs:
            continue
        if not (ticket.strip() or escalate.strip()):
            check.error(item, f"vendor {vendor!r}: say how to open a ticket (`ticket:`) or how "
                              "to escalate (`escalate:`), or both")
            continue
        out.append(Vendor(vendor.strip(), tuple(dict.fromkeys(r for r, _ in refs)),
                          " ".join(ticket.split()), " ".join(escalate.split())))
    return tuple(out)


def _oncall(check: _Checker, key: str, entry: tuple[Node, Node] | None,
            people: Mapping[str, Person]) -> tuple[str, ...] | None:
    """The on-call people of a service, in order; each must be in `people:`."""
    if entry is None or _is_null(entry[1]):
        return ()
    errors_before = len(check.errors)
    found = []
    for text, node in check.texts(entry[0], entry[1], f"service {key!r} oncall",
                                  "[ana@example.org, ben@example.org]"):
        address = _bare_address(text)
        if address.lower() not in people:
            check.error(node, f"service {key!r} oncall: {text!r} is not in `people:`; "
                              "add them there first (the on-call person may lead incidents)")
        found.append(address.lower())
    if len(check.errors) > errors_before:
        return None
    return tuple(dict.fromkeys(found))


def _list_refs(
    check: _Checker, entry: tuple[Node, Node], what: str, list_names: set[str]
) -> tuple[str, ...] | None:
    """Names of defined lists, or None after reporting an empty or unknown reference."""
    k, value = entry
    if _is_null(value) or (isinstance(value, SequenceNode) and not value.value):
        check.error(k, f"{what} names no lists; give at least one, e.g. [stakeholders]")
        return None
    errors_before = len(check.errors)
    refs = check.texts(k, value, what, "[stakeholders]")
    known = ", ".join(sorted(list_names)) or "none; define them under `lists:`"
    for ref, ref_node in refs:
        if ref not in list_names:
            check.error(ref_node, f"{what}: unknown list {ref!r} (known lists: {known})")
    if len(check.errors) > errors_before:
        return None
    return tuple(dict.fromkeys(r for r, _ in refs))


def _escalate(
    check: _Checker, key: str, entry: tuple[Node, Node] | None, list_names: set[str]
) -> tuple[tuple[timedelta, tuple[str, ...]], ...] | None:
    """Sorted (threshold, lists) steps, () when absent, None after reporting a problem."""
    if entry is None or _is_null(entry[1]):
        return ()
    node = entry[1]
    if not isinstance(node, MappingNode):
        check.error(
            node,
            f"service {key!r} escalate must map a time to lists, "
            "e.g. {4h: [management], 1d: [upper-management]}",
        )
        return None
    steps: dict[timedelta, tuple[str, ...]] = {}
    first: dict[timedelta, int] = {}
    bad = False
    for text, (tk, value) in check.entries(node).items():
        try:
            at = clock.parse_duration(text)
        except InvalidInput:
            check.error(
                tk, f"service {key!r}: bad escalation threshold {text!r}; write e.g. 4h, 90m or 1d"
            )
            bad = True
            continue
        if at in first:
            check.error(tk, f"service {key!r}: threshold {text!r} repeats line {first[at]}")
            bad = True
            continue
        first[at] = _line(tk)
        refs = _list_refs(check, (tk, value), f"service {key!r} escalate {text}", list_names)
        if refs is None:
            bad = True
            continue
        steps[at] = refs
    return None if bad else tuple(sorted(steps.items()))


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    if node.tag == _STR:
        return f"the text {node.value!r}"
    return _KINDS.get(str(node.tag), f"a value tagged {node.tag}")


_bare_address = lookup_key


def _compose(text: str, where: str) -> Node | None:
    """YAML text → node tree with positions; syntax errors become `file:line:` errors."""
    # Nodes rather than constructed objects: every value keeps its position, and nothing
    # (dates, tags) gets constructed before it is validated.
    try:
        return YAML(typ="rt").compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            reason += f" ({exc.context} at line {exc.context_mark.line + 1})"
        words = _explain_yaml(exc, text)
        if words:
            raise ContactsError(f"{where}:{line}: YAML syntax error: {words} "
                                f"(the parser says: {reason})") from None
        raise ContactsError(f"{where}:{line}: YAML syntax error: {reason}") from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ContactsError(
            f"{where}:{line}: the control character U+{code:04X} is not allowed in a YAML file"
        ) from None
    except YAMLError as exc:
        raise ContactsError(f"{where}:1: YAML error: {exc}") from None


def _spaces(count: int) -> str:
    return f"{count} space{'' if count == 1 else 's'}"


def _explain_yaml(exc: MarkedYAMLError, text: str) -> str:
    """The parser's complaint in words, for the mistakes people make by hand; "" if unknown."""
    problem, mark = exc.problem or "", exc.problem_mark
    if mark is None:
        return ""
    lines = text.splitlines()
    here = lines[mark.line] if mark.line < len(lines) else ""
    indent = len(here) - len(here.lstrip(" "))
    if problem.startswith("expected <block end>") and exc.context_mark is not None:
        # A line that starts further left or right than the block it belongs to.
        block = exc.context_mark
        above = next((ln for ln in reversed(lines[:mark.line])
                      if ln.strip() and not ln.lstrip().startswith("#")), "")
        return (f"indentation: this line is indented by {_spaces(indent)}, which does not line "
                f"up with the line above ({_spaces(len(above) - len(above.lstrip(' ')))}) nor "
                f"with the block that starts at line {block.line + 1} "
                f"({_spaces(block.column)}); indent it exactly like the entries it belongs with")
    if problem.startswith("mapping values are not allowed"):
        return ("a `key:` cannot start here: this line is indented more than the line above, "
                "which already has a value (line it up with its neighbours), or a value "
                "contains ': ' (put that value in quotes)")
    for closer, what in (("]", "list"), ("}", "mapping")):
        if problem.startswith(f"expected ',' or '{closer}'") and exc.context_mark is not None:
            return (f"the {what} opened at line {exc.context_mark.line + 1} is not closed with "
                    f"`{closer}`, or two of its items lack a comma between them")
    if "'\\t'" in problem or "\t" in problem:
        return "a tab character: YAML indents with spaces only; replace the tab with spaces"
    return ""


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ContactsError(
            f"{path}: contacts file not found; run `mailflow init` to create an example one, "
            "or point the configuration at the right file"
        ) from None
    except OSError as exc:
        raise ContactsError(
            f"{path}: cannot read the contacts file ({exc.strerror}); check the path and "
            "its permissions"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ContactsError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None


# --- round-trip editing ----------------------------------------------------------------------

# Edits are text splices located through the YAML node positions, not a re-dump of the whole
# document: a dump normalises spacing, quoting and indentation, and operators diff this file.
_Edit = tuple[int, int, str]


class ContactsFile:
    """contacts.yaml opened for editing; everything outside the edited entries stays as is."""

    def __init__(self, path: Path | str, rules: Rules = STRICT) -> None:
        self.path = Path(path)
        self.rules = rules
        self._original = _read_text(self.path)
        parse_contacts(self._original, self.path, rules)  # edits rely on a valid structure
        self._text = self._original
        self._newline = "\r\n" if "\r\n" in self._original else "\n"

    @property
    def text(self) -> str:
        """The file's text including unsaved edits."""
        return self._text

    def add_person(
        self,
        name: str,
        email: str,
        expertise: Iterable[str] = (),
        timezone: str | None = None,
        lists: Iterable[str] = (),
    ) -> None:
        """Append a person (flow style) to `people:` and their address to the given lists."""
        if isinstance(expertise, str):
            expertise = (expertise,)
        if isinstance(lists, str):
            lists = (lists,)
        name, email = name.strip(), email.strip()
        where, text, nl = str(self.path), self._text, self._newline
        sections = self._sections()

        people = sections.get("people")
        for item in _items(people):
            other = _entries(item).get("email") if isinstance(item, MappingNode) else None
            if other and isinstance(other[1], ScalarNode) and _same(other[1].value, email):
                who = _entries(item).get("name")
                as_who = f" as {who[1].value}" if who and isinstance(who[1], ScalarNode) else ""
                raise ContactsError(
                    f"{where}:{_line(other[1])}: {email} is already in the contacts{as_who}; "
                    f"remove it first (`mailflow contacts remove {shlex.quote(email)}`) "
                    "or edit the file"
                )

        list_entries = _entries(sections["lists"][1]) if "lists" in sections else {}
        wanted = list(dict.fromkeys(lists))
        for list_name in wanted:
            if list_name not in list_entries:
                line = _line(sections["lists"][0]) if "lists" in sections else 1
                known = ", ".join(list_entries) or "none"
                raise ContactsError(
                    f"{where}:{line}: no list named {list_name!r} (known lists: {known}); "
                    "create it in the file first"
                )

        parts = [f"name: {_scalar(name)}", f"email: {_scalar(email)}"]
        tags = list(dict.fromkeys(t.strip() for t in expertise if t.strip()))
        if tags:
            parts.append(f"expertise: [{', '.join(_scalar(t) for t in tags)}]")
        if timezone:
            parts.append(f"timezone: {_scalar(timezone.strip())}")
        entry = "{" + ", ".join(parts) + "}"

        edits: list[_Edit] = []
        if people is None:
            lead = nl if text and not text.endswith("\n") else ""
            edits.append((len(text), len(text), f"{lead}people:{nl}  - {entry}{nl}"))
        else:
            edits.append(_append_item(text, people, entry, nl, where))
        for list_name in wanted:
            key_node, value = list_entries[list_name]
            if any(
                isinstance(i, ScalarNode) and _same(i.value, email)
                for i in _items((key_node, value))
            ):
                continue
            edits.append(_append_item(text, (key_node, value), _scalar(email), nl, where))
        self._text = _apply(text, edits, where)

    def remove_person(self, email: str) -> None:
        """Remove the person with this address and the address from every list."""
        address = _bare_address(email)
        where, text = str(self.path), self._text
        sections = self._sections()
        edits: list[_Edit] = []
        people = sections.get("people")
        if people is not None:
            doomed = []
            for index, item in enumerate(_items(people)):
                own = _entries(item).get("email") if isinstance(item, MappingNode) else None
                if own and isinstance(own[1], ScalarNode) and _same(own[1].value, address):
                    doomed.append(index)
            edits += _remove_items(text, people, doomed, where)
        if "lists" in sections and isinstance(sections["lists"][1], MappingNode):
            for key_node, value in _entries(sections["lists"][1]).values():
                doomed = [
                    i
                    for i, item in enumerate(_items((key_node, value)))
                    if isinstance(item, ScalarNode) and _same(item.value, address)
                ]
                edits += _remove_items(text, (key_node, value), doomed, where)
        if not edits:
            raise NotFound(
                f"{address} is not in {where}: no person has that email and no list contains it"
            )
        self._text = _apply(text, edits, where)

    def save(self) -> Contacts:
        """Validate the edited text, then replace the file atomically; returns the new contacts."""
        contacts = parse_contacts(self._text, self.path, self.rules)
        if self._text == self._original:
            return contacts
        try:
            data = self._text.encode("utf-8")
        except UnicodeEncodeError:
            raise ContactsError(
                f"{self.path}: the edit contains text that is not valid UTF-8"
            ) from None
        try:
            on_disk = self.path.read_bytes()
        except OSError:
            on_disk = None
        if on_disk != self._original.encode("utf-8"):
            # Someone edited the file by hand meanwhile; writing would silently drop their change.
            raise ContactsError(
                f"{self.path}: the file changed on disk since it was opened; run the command again"
            )
        _write_atomic(self.path, data)
        self._original = self._text
        return contacts

    def _sections(self) -> dict[str, tuple[Node, Node]]:
        root = _compose(self._text, str(self.path))
        return _entries(root) if isinstance(root, MappingNode) else {}


def _entries(node: Node) -> dict[str, tuple[Node, Node]]:
    out: dict[str, tuple[Node, Node]] = {}
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode):
                out.setdefault(k.value, (k, v))
    return out


def _items(entry: tuple[Node, Node] | None) -> list[Node]:
    if entry is None or not isinstance(entry[1], SequenceNode):
        return []
    return list(entry[1].value)


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _scalar(value: str) -> str:
    """`value` as a YAML flow scalar: plain when that reads back identically, else quoted."""
    if value and value == value.strip() and "\n" not in value and "\r" not in value:
        try:
            as_value = YAML(typ="rt").compose(f"{{k: {value}}}")
            as_item = YAML(typ="rt").compose(f"[{value}]")
        except YAMLError:
            pass
        else:
            plain = [as_value.value[0][1], as_item.value[0]] if as_value and as_item else []
            if plain and all(
                isinstance(n, ScalarNode) and n.tag == _STR and n.style is None and n.value == value
                for n in plain
            ):
                return value
    return _quote(value)


_PRINTABLE = re.compile("[\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _PRINTABLE.match(ch):
            out.append(ch)
        else:  # the YAML reader refuses raw non-printable characters even inside quotes
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _cannot_edit(where: str, node: Node, why: str) -> ContactsError:
    return ContactsError(
        f"{where}:{_line(node)}: cannot edit this automatically ({why}); edit the file by hand"
    )


def _check_in_place(where: str, node: Node, after: int) -> None:
    # An alias (*name) composes to the anchored node, whose text is elsewhere in the file.
    if node.start_mark.index < after:
        raise _cannot_edit(where, node, "it uses a YAML alias")


def _content_end(text: str, node: Node) -> int:
    """Index just past the last character of the node's own text (-1 if it has none)."""
    if isinstance(node, ScalarNode) or getattr(node, "flow_style", False):
        if _is_null(node) and node.value == "":
            return -1  # an empty value's mark points at the next token, not at itself
        end = node.end_mark.index
        while end > node.start_mark.index and text[end - 1] in " \t\r\n":
            end -= 1  # block scalars (|, >) include their trailing line breaks
        return int(end)
    children: list[Node] = []
    for child in node.value:
        children.extend(child if isinstance(child, tuple) else (child,))
    return max((_content_end(text, c) for c in children), default=-1)


def _dash(text: str, item: Node, where: str) -> int:
    i = item.start_mark.index - 1
    while i >= 0 and text[i] in " \t\r\n":
        i -= 1
    if i < 0 or text[i] != "-":
        raise _cannot_edit(where, item, "unusual layout of a list item")
    return i


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _line_after(text: str, index: int) -> int:
    """Index of the start of the line after the one containing `index` (or the text's end)."""
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def _append_item(text: str, entry: tuple[Node, Node], item: str, nl: str, where: str) -> _Edit:
    """An edit adding `item` as the last element of the sequence `key: value`."""
    key_node, seq = entry
    _check_in_place(where, seq, key_node.end_mark.index)
    if _is_null(seq) and seq.value == "":  # `key:` with nothing after it
        at = _line_after(text, key_node.end_mark.index)
        lead = nl if at == len(text) and not text.endswith("\n") else ""
        indent = " " * (key_node.start_mark.column + 2)
        return (at, at, f"{lead}{indent}- {item}{nl}")
    if _is_null(seq):  # `key: ~` or `key: null`
        return (seq.start_mark.index, seq.end_mark.index, f"[{item}]")
    if not isinstance(seq, SequenceNode):
        raise _cannot_edit(where, seq, "expected a list here")
    items = list(seq.value)
    previous = seq.start_mark.index
    for child in items:
        _check_in_place(where, child, previous)
        previous = child.end_mark.index
    if seq.flow_style:
        if items:
            at = _content_end(text, items[-1])
            return (at, at, f", {item}")
        close = seq.end_mark.index - 1
        if text[close] != "]":
            raise _cannot_edit(where, seq, "unusual layout of a list")
        return (close, close, item)
    last = items[-1]
    dash = _dash(text, last, where)
    end = max(_content_end(text, last), dash + 1)
    at = _line_after(text, end)
    lead = nl if at == len(text) and not text.endswith("\n") else ""
    return (at, at, f"{lead}{' ' * (dash - _line_start(text, dash))}- {item}{nl}")


def _remove_items(
    text: str, entry: tuple[Node, Node], doomed: list[int], where: str
) -> list[_Edit]:
    """Edits deleting the given elements of the sequence `key: value`."""
    if not doomed:
        return []
    key_node, seq = entry
    _check_in_place(where, seq, key_node.end_mark.index)
    if not isinstance(seq, SequenceNode):
        raise _cannot_edit(where, seq, "expected a list here")
    items = list(seq.value)
    previous = seq.start_mark.index
    for child in items:
        _check_in_place(where, child, previous)
        previous = child.end_mark.index
    edits: list[_Edit] = []
    if not seq.flow_style:
        for index in doomed:
            dash = _dash(text, items[index], where)
            start = _line_start(text, dash)
            if text[start:dash].strip():
                raise _cannot_edit(where, items[index], "unusual layout of a list item")
            end = max(_content_end(text, items[index]), dash + 1)
            edits.append((start, _line_after(text, end), ""))
        return edits
    # Flow lists: delete each run of removed items with the comma that separates it.
    gone = set(doomed)
    index = 0
    while index < len(items):
        if index not in gone:
            index += 1
            continue
        first = index
        while index + 1 < len(items) and index + 1 in gone:
            index += 1
        last = index
        if last + 1 < len(items):
            edits.append((items[first].start_mark.index, items[last + 1].start_mark.index, ""))
        elif first > 0:
            prev_end = _content_end(text, items[first - 1])
            edits.append((prev_end, _content_end(text, items[last]), ""))
        else:
            close = seq.end_mark.index - 1
            if text[close] != "]":
                raise _cannot_edit(where, seq, "unusual layout of a list")
            edits.append((items[first].start_mark.index, close, ""))  # also drops a trailing comma
        index += 1
    return edits


def _apply(text: str, edits: list[_Edit], where: str) -> str:
    # Stable sort: of two insertions at one spot, the one listed first ends up last.
    ordered = sorted(dict.fromkeys(edits), key=lambda e: -e[0])
    limit = len(text)
    for start, end, new in ordered:
        if end > limit:
            raise ContactsError(f"{where}: overlapping edits; edit the file by hand")
        text = text[:start] + new + text[end:]
        limit = start
    return text


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace the file's content so that readers see the old or the new file, never a mix."""
    target = Path(os.path.realpath(path))  # replace a symlink's target, not the symlink
    try:
        before = os.stat(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ContactsError(f"{path}: cannot write ({exc.strerror}); check permissions") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), stat.S_IMODE(before.st_mode))
            if os.geteuid() == 0:
                # root editing the service user's file must not leave it unreadable to the daemon
                with contextlib.suppress(OSError):
                    os.fchown(fh.fileno(), before.st_uid, before.st_gid)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ContactsError(
                f"{path}: cannot write ({exc.strerror}); check permissions"
            ) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
