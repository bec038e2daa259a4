"""The exception types a user sees as a message rather than a traceback."""

from pipeline.engine.errors import EngineError


class PipelineError(Exception):
    """A problem the user can act on: the message names what is wrong and how to fix it."""


# What the app reports as one line and exit code 2: the pipeline's and the engine's own.
USER_ERRORS = (PipelineError, EngineError)
