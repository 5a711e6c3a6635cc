"""User-facing errors.

Every problem a user can fix (bad counts, missing vocabulary files, an output that exists...) is
raised as :class:`IspoError` with a one-line message that names the problem and the fix. The CLI
prints that line to stderr and exits non-zero; anything else is a bug and keeps its traceback.
"""


class IspoError(Exception):
    """A problem with the user's input or options, reported as one clear line."""
