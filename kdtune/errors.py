"""The one exception type for user mistakes.

The CLI turns a KDTuneError into one line on stderr and exit code 2: a user who mistyped a key or
is offline deserves a sentence naming what is wrong and what is allowed, not a traceback.
"""


class KDTuneError(Exception):
    """A problem the user can fix (bad config, missing data, no network); never a bug."""
