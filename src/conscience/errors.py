"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""

from __future__ import annotations


class ConscienceError(Exception):
    """A problem the user can fix (bad input, missing package, bad config)."""


class ModelSpecError(ConscienceError):
    """The model spec names nothing that can be loaded."""


class PromptTooLongError(ConscienceError):
    """A prompt does not fit the model's context window."""


class DataFormatError(ConscienceError):
    """A data or config file is malformed; the message names the file, line and field."""


class DraftNotLocatedError(ConscienceError):
    """The review prompt's rendering does not show where the answer is: the review fails
    (closed) rather than read other tokens as the answer."""
