"""`mailflow contacts …`: look at, edit and check contacts.yaml from the command line."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from .addresses import Rules, lookup_key, problem, rules_of
from .clock import compact_duration
from .config import find_config, load_config
from .errors import ContactsError, InvalidInput, NotFound

if TYPE_CHECKING:
    from .contacts import Contacts, Person, Service

__all__ = ["HelpGroup", "contacts"]

# The contacts module (and ruamel.yaml) is imported by the commands that read the file:
# every `mailflow` command loads this module, most of them never open contacts.yaml.

# MailflowError raised here is not converted locally: this group is invoked from inside
# `cli`'s Group.invoke, which turns it into `Error: …` and exit code 1 (nested groups too).

class HelpGroup(click.Group):
    """A group whose command list shows each summary whole (wrapped), never cut with "..."."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _contacts_path(ctx: click.Context) -> Path:
    """The contacts file the configuration names (--config, $MAILFLOW_CONFIG, ./mailflow.toml)."""
    config_path = getattr(ctx.obj, "config_path", None) or find_config(None)
    return load_config(Path(config_path)).contacts


def _rules(ctx: click.Context) -> Rules:
    """The address rules of the configuration (`allow_local_domains`, `[outbound] smtputf8`)."""
    config_path = getattr(ctx.obj, "config_path", None) or find_config(None)
    return rules_of(load_config(Path(config_path)))


_address = lookup_key


_threshold = compact_duration  # a threshold as written in contacts.yaml: 30m, 4h, 1h30m


def _split(values: tuple[str, ...]) -> list[str]:
    """Comma- or argument-separated words, stripped, duplicates and empties dropped."""
    words = (w.strip() for value in values for w in value.split(","))
    return list(dict.fromkeys(w for w in words if w))


def _lists_of(book: Contacts, email: str) -> list[str]:
    """Names of the lists that contain this address (any case)."""
    address = _address(email)
    return [name for name, members in book.lists.items()
            if any(m.lower() == address for m in members)]


def _person_data(book: Contacts, person: Person) -> dict[str, Any]:
    """A person as JSON-ready data, with the lists they are on."""
    return {"name": person.name, "email": person.email, "expertise": list(person.expertise),
            "timezone": person.timezone, "lists": _lists_of(book, person.email)}


def _service_data(service: Service) -> dict[str, Any]:
    """A service as JSON-ready data; thresholds written as in contacts.yaml (4h, 1d)."""
    data: dict[str, Any] = {
        "title": service.title, "notify": list(service.notify),
        "escalate": {_threshold(at): list(names) for at, names in service.escalate},
        "expertise": list(service.expertise)}
    if service.audiences:  # `notify: {list: all|milestones}`: what each list gets, and when
        data["audiences"] = {name: {"gets": gets, "hold": sorted(held)}
                             for name, gets, held in service.audiences}
    return data


def _audience(service: dict[str, Any], name: str) -> str:
    """`learn-users (milestones, P3 held out of hours)`, or the list's name alone."""
    a = service.get("audiences", {}).get(name)
    if not a:
        return name
    hold = f", {'/'.join(a['hold'])} held out of hours" if a["hold"] else ""
    return f"{name} ({a['gets']}{hold})"


def plural(count: int, one: str, many: str = "") -> str:
    """`1 service`, `2 services`, `0 people`."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def _describe_person(person: Person) -> str:
    """`Name <email>`."""
    return f"{person.name} <{person.email}>"


@click.group(cls=HelpGroup)
def contacts() -> None:
    """Look at, edit and check contacts.yaml (the file the configuration names).

    \b
    Example:
      mailflow contacts check
      mailflow contacts add --name "Gus Berg" --email gus@example.org --list stakeholders
    """


@contacts.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List people, lists and services.

    \b
    Example:
      mailflow contacts list --json
    """
    from .contacts import load_contacts

    book = load_contacts(_contacts_path(ctx))
    people = [_person_data(book, p) for p in book.people.values()]
    services = {key: _service_data(s) for key, s in book.services.items()}
    if as_json:
        data = {"people": people, "lists": {k: list(v) for k, v in book.lists.items()},
                "services": services}
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(f"people ({len(people)}):" if people else "people: none")
    for p in people:
        extra = [f"expertise: {', '.join(p['expertise'])}"] if p["expertise"] else []
        extra += [f"timezone: {p['timezone']}"] if p["timezone"] else []
        extra += [f"lists: {', '.join(p['lists'])}"] if p["lists"] else []
        click.echo("  " + "  ".join([f"{p['name']} <{p['email']}>", *extra]))
    click.echo(f"lists ({len(book.lists)}):" if book.lists else "lists: none")
    for name, members in book.lists.items():
        click.echo(f"  {name}: {', '.join(members) or '(empty)'}")
    click.echo(f"services ({len(services)}):" if services else "services: none")
    for key, s in services.items():
        click.echo(f"  {key}: {s['title']}")
        click.echo(f"    notify: {', '.join(_audience(s, n) for n in s['notify'])}")
        for at, names in s["escalate"].items():
            click.echo(f"    escalate {at}: {', '.join(names)}")
        if s["expertise"]:
            click.echo(f"    expertise: {', '.join(s['expertise'])}")


@contacts.command()
@click.argument("email")
@json_option
@click.pass_context
def show(ctx: click.Context, email: str, as_json: bool) -> None:
    """Show a person, their lists and services.

    EMAIL may also be a plain address that is only on lists (a team alias).

    \b
    Example:
      mailflow contacts show ana@example.org --json
    """
    if not _address(email):
        raise InvalidInput("give an email address, e.g. mailflow contacts show ana@example.org")
    path = _contacts_path(ctx)
    from .contacts import load_contacts

    book = load_contacts(path)
    person = book.person(email)
    lists = _lists_of(book, email)
    if person is None and not lists:
        raise NotFound(f"{_address(email)} is not in {path}: no person has that email and no "
                       "list contains it; `mailflow contacts list` shows who is")
    services: list[dict[str, Any]] = []
    for key, service in book.services.items():
        notify = [name for name in service.notify if name in lists]
        escalate = {_threshold(at): [n for n in names if n in lists]
                    for at, names in service.escalate if any(n in lists for n in names)}
        if notify or escalate:
            services.append({"key": key, "title": service.title, "notify": notify,
                             "escalate": escalate})
    data = {"name": person.name if person else None,
            "email": person.email if person else _address(email),
            "expertise": list(person.expertise) if person else [],
            "timezone": person.timezone if person else None,
            "lists": lists, "services": services}
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(_describe_person(person) if person else f"{data['email']} (an address on lists, "
               "not a person)")
    if person:
        click.echo(f"  expertise: {', '.join(person.expertise) or '-'}")
        click.echo(f"  timezone:  {person.timezone or '-'}")
    click.echo(f"  lists:     {', '.join(lists) or '-'}")
    if not services:
        click.echo("  services:  - (no service notifies or escalates to their lists)")
    for s in services:
        how = [f"notify via {', '.join(s['notify'])}"] if s["notify"] else []
        how += [f"escalate {at} via {', '.join(names)}" for at, names in s["escalate"].items()]
        click.echo(f"  service {s['key']} ({s['title']}): {'; '.join(how)}")


@contacts.command()
@click.option("--name", required=True, help="Full name, as it appears in emails.")
@click.option("--email", required=True, help="Their email address.")
@click.option("--expertise", "expertise", multiple=True, metavar="TAG,TAG",
              help="Comma-separated expertise tags (repeatable).")
@click.option("--timezone", default=None, metavar="ZONE",
              help="IANA time zone, e.g. Europe/Zurich.")
@click.option("--list", "lists", multiple=True, metavar="LIST",
              help="Also add their address to this existing list (repeatable).")
@click.pass_context
def add(ctx: click.Context, name: str, email: str, expertise: tuple[str, ...],
        timezone: str | None, lists: tuple[str, ...]) -> None:
    """Add a person; the rest of the file is kept.

    The entry is appended to `people:` and the address to each --list (which must exist).

    \b
    Example:
      mailflow contacts add --name "Gus Berg" --email gus@example.org \\
          --expertise postgres,dns --timezone Europe/Zurich --list stakeholders
    """
    name, email = name.strip(), email.strip()
    if not name:
        raise InvalidInput("--name is empty; give the person's full name, e.g. --name \"Ana Lima\"")
    rules = _rules(ctx)
    from .contacts import ContactsFile, is_address

    if not is_address(email, rules):
        raise InvalidInput(f"--email: {email!r} is not a valid email address: "
                           f"{problem(email, rules) or 'write e.g. ana@example.org'}")
    if timezone is not None:
        timezone = timezone.strip()
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidInput(f"--timezone: unknown time zone {timezone!r}; use an IANA name "
                               "such as Europe/Zurich or UTC") from None
    path = _contacts_path(ctx)
    editor = ContactsFile(path, rules)
    wanted = _split(lists)
    editor.add_person(name, email, _split(expertise), timezone or None, wanted)
    book = editor.save()
    person = book.person(email)
    added = _describe_person(person) if person else email
    on = f"; on lists: {', '.join(wanted)}" if wanted else ""
    click.echo(f"added {added} to {path}{on}")


@contacts.command()
@click.argument("email")
@click.pass_context
def remove(ctx: click.Context, email: str) -> None:
    """Remove a person from people and all lists.

    A plain address that is only on lists is taken off those lists.

    \b
    Example:
      mailflow contacts remove gus@example.org
    """
    path = _contacts_path(ctx)
    from .contacts import ContactsFile, parse_contacts

    editor = ContactsFile(path)
    before = parse_contacts(editor.text, path)
    person, lists = before.person(email), _lists_of(before, email)
    editor.remove_person(email)
    editor.save()
    who = _describe_person(person) if person else _address(email)
    where = ["people"] if person else []
    where += [f"lists: {', '.join(lists)}"] if lists else []
    click.echo(f"removed {who} from {path} ({'; '.join(where)})")
    refs = _off_open_incidents(ctx, email)
    if refs:
        click.echo(f"taken off {', '.join(refs)} (recipients and roles); their replies there "
                   "are now refused")


def _off_open_incidents(ctx: click.Context, email: str) -> list[str]:
    """Take a removed person off every open incident: recipients, roles, impacted."""
    from . import clock
    from . import incidents as inc
    from .app import Mailflow

    config_path = getattr(ctx.obj, "config_path", None) or find_config(None)
    config = load_config(Path(config_path))
    if isinstance(config.database, Path) and not config.database.exists():
        return []  # no incidents yet
    app = Mailflow(config)
    try:
        author = os.environ.get("MAILFLOW_USER") or os.environ.get("USER") or "cli"
        return inc.remove_person(app, email, clock.now(), author)
    finally:
        app.close()


@contacts.command()
@click.argument("tags", nargs=-1, required=True)
@json_option
@click.pass_context
def experts(ctx: click.Context, tags: tuple[str, ...], as_json: bool) -> None:
    """Who can help with these tags, best first.

    One line each: `Name <email>: matched tags (all their tags)`; most matches first.

    \b
    Example:
      mailflow contacts experts postgres backups
    """
    wanted = _split(tags)
    if not wanted:
        raise InvalidInput("name at least one expertise tag, e.g. postgres")
    from .contacts import load_contacts

    book = load_contacts(_contacts_path(ctx))
    found = book.experts(wanted)
    if as_json:
        rows = [{"name": p.name, "email": p.email, "matched": list(matched),
                 "expertise": list(p.expertise), "timezone": p.timezone}
                for p, matched in found]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not found:
        known = sorted({t for p in book.people.values() for t in p.expertise}, key=str.casefold)
        close = [m for tag in wanted
                 for m in difflib.get_close_matches(tag.casefold(), known, n=3, cutoff=0.6)]
        hint = (f"did you mean {', '.join(dict.fromkeys(close))}?" if close
                else "`mailflow contacts list` shows everyone's tags")
        click.echo(f"nobody has expertise in {', '.join(wanted)}; {hint}")
        return
    for person, matched in found:
        click.echo(f"{_describe_person(person)}: {', '.join(matched)} "
                   f"({', '.join(person.expertise)})")


@contacts.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate contacts.yaml; exit 1 on problems.

    Prints `ok: N people, M lists, K services`, or every problem as `file:line: reason`
    on stderr.

    \b
    Example:
      mailflow contacts check && systemctl reload mailflow
    """
    path = _contacts_path(ctx)
    try:
        from .contacts import load_contacts

        book = load_contacts(path, _rules(ctx))
    except ContactsError as exc:
        for line in str(exc).splitlines():
            click.echo(line, err=True)
        ctx.exit(1)
    click.echo(f"ok: {plural(len(book.people), 'person', 'people')}, "
               f"{plural(len(book.lists), 'list')}, {plural(len(book.services), 'service')}")
