"""The one exception type for user mistakes.

Library functions raise `UserError` with a sentence that says what was wrong and what to do;
the CLI turns it into one line on stderr and exit code 2. Anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad option, bad file), not a bug."""
