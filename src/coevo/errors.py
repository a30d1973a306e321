"""One base class for every error coevo raises on purpose.

The library raises a subclass of :class:`CoevoError` whose message names the
value, file or folder at fault and the fix; the CLI prints it as one line
(``coevo <cmd>: error: ...``) and exits with code 2. Anything else that
escapes is a bug in coevo, not a user error.
"""
from __future__ import annotations


class CoevoError(Exception):
    """Base of all errors coevo raises for bad input, bad state or a failed run."""


class ConfigError(CoevoError, ValueError):
    """A configuration value or key that coevo cannot use; the message names it."""


class CheckpointError(CoevoError, ValueError):
    """A file that cannot be loaded as the network asked for; the message says why and what to do."""
