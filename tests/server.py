"""Kept for a moment for code written against the old location; use ``loadtests.server``."""

from loadtests.server import running_server  # noqa: F401
