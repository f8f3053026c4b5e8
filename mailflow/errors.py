"""The one exception family: every message tells the user what to do next."""


class MailflowError(Exception):
    """Base of every error mailflow reports to a user; the CLI turns it into exit code 1."""

    exit_code = 1


class ConfigError(MailflowError):
    """mailflow.toml is missing, unreadable or has a wrong key or value."""


class ContactsError(MailflowError):
    """contacts.yaml is invalid; the message starts with `file:line:`."""


class NotFound(MailflowError):
    """An incident, contact or template that was named does not exist."""


class InvalidInput(MailflowError):
    """A command-line or reply value is not acceptable (severity, impact, duration...)."""


class TemplateError(MailflowError):
    """A Jinja2 template failed to load or render; the message names the file."""
