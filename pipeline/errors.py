"""The one exception type a user sees as a message rather than a traceback."""


class PipelineError(Exception):
    """A problem the user can act on: the message names what is wrong and how to fix it."""
