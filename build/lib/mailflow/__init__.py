"""mailflow: incident communication over plain email."""

__version__ = "0.1.0"
