"""Errors the `emotion` command reports as one line and exit 2. No Beam or TensorFlow import:
every stage, training included, raises these."""


class UsageError(Exception):
    """An error the user caused (bad path, bad option): the CLI prints one line and exits 2."""
