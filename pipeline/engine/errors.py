"""The engine's exceptions: plain Python, so the engine needs nothing of the pipeline."""


class EngineError(ValueError):
    """A setting the engine cannot use: the message names it and what is allowed."""


class DivergenceError(EngineError):
    """The cost or a weight became NaN or infinite."""
