"""The one exception root: every error edgepack raises for bad input or a failed job derives
from ``EdgepackError``, so callers catch one class and the CLI prints one line for it."""


class EdgepackError(Exception):
    """Base of every edgepack error; the message names what is wrong and what would be valid."""
