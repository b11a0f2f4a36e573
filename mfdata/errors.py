"""The root of every error mfkit reports to a user.

Every user-facing error of both packages derives from :class:`MfkitError`, so the command lines
catch exactly these (and missing or existing files) and print one line; any other exception is a
bug and keeps its traceback. The specific errors keep their Python base (``ValueError``,
``KeyError``...) as a second base, so code that caught those still does.
"""

from __future__ import annotations


class MfkitError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class UsageError(MfkitError, ValueError):
    """An argument or option that cannot be used as given."""
