"""What the user got wrong, as one hierarchy.

Every error the library raises about its inputs (an argument, a path, a file's contents, a setting) is a
`WamError`, worded in the library's terms: an argument is named as in Python, written in backquotes
(`resume=True`, `tokenizer_from`), so that the command line can name its flag instead (`wam.cli`). The command
line prints a `WamError` as one line; any other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a Python caller would expect (`ValueError` for a bad
value, `FileNotFoundError` for a missing path, `RuntimeError` for a run that cannot go on), so code that
catches those keeps working.
"""

from __future__ import annotations


class WamError(Exception):
    """A problem with what the user gave wam: the message names what and where, and how to fix it."""

    def __str__(self) -> str:  # the message as given (a KeyError or an OSError would decorate it)
        return str(self.args[0]) if self.args else ""


class ArgumentError(WamError, ValueError):
    """An argument or setting is unknown, out of range, or contradicts another."""


class ObservationError(ArgumentError, KeyError):
    """An observation lacks a key the policy needs (a camera, the robot state)."""


class NotFoundError(WamError, FileNotFoundError):
    """A path that should hold something (a checkpoint, a critic, an adapter, an interrupted write) does not."""


class DatasetError(WamError, ValueError):
    """A dataset on disk is missing something or contradicts itself, or does not suit the run."""


class CheckpointError(WamError, ValueError):
    """A checkpoint's files contradict each other, or do not fit what they are used with."""


class MissingDependency(WamError, ImportError):
    """What was asked for needs an optional package that is not installed; the message names the extra."""


class UnavailableError(WamError, RuntimeError):
    """What was asked for cannot run on this machine (a GPU-only kernel without a GPU) or in this state."""


class TrainingDiverged(WamError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite: the run's settings (often the learning rate) need a
    change."""


__all__ = [
    "ArgumentError",
    "CheckpointError",
    "DatasetError",
    "MissingDependency",
    "NotFoundError",
    "ObservationError",
    "TrainingDiverged",
    "UnavailableError",
    "WamError",
]
