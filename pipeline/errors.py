"""The exception types a user sees as a message rather than a traceback."""

from pipeline.engine.errors import DivergenceError, EngineError


class PipelineError(Exception):
    """A problem the user can act on: the message names what is wrong and how to fix it."""


class RunFailed(Exception):
    """Runs ended FAILED (diverged, collapsed): the rest of the pipeline went on; the app
    exits 1 and names them."""


class RunStopped(Exception):
    """A run stopped on purpose before its end (a search's pruner gave up on it): the run
    ends KILLED with the reason as tag `stopped_reason`, not FAILED."""

    label = "stopped"  # appended to the run's name


class CollapseError(DivergenceError):
    """Training ended at chance: the model gives one answer to every input."""


# What the app reports as one line and exit code 2: the pipeline's and the engine's own.
USER_ERRORS = (PipelineError, EngineError)
