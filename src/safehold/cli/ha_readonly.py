"""``safehold ha`` commands run on the primary for a new readonly server (registered on ha_app)."""

from safehold.cli.ha import ha_app  # noqa: F401 - commands are added to it
