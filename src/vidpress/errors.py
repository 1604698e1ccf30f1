"""Exceptions raised by vidpress. Each names the offending value and the fix.

All inherit from :class:`VidpressError`, so ``except vidpress.VidpressError`` catches every error this
library raises on purpose; the CLI prints their message as one line.
"""

from __future__ import annotations


class VidpressError(Exception):
    """Base class of every error vidpress raises on purpose."""


class InvalidParameterError(VidpressError, ValueError):
    """A hyperparameter is outside its documented range (e.g. a ratio outside [0, 1])."""


class VideoError(VidpressError):
    """Base class of video-input errors; ``path`` is the file concerned."""

    def __init__(self, path: object, message: str):
        self.path = str(path)
        super().__init__(message)


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist."""


class NotAVideoError(VideoError):
    """The file is not a readable media container (corrupt, truncated or another format)."""


class NoVideoStreamError(VideoError):
    """The container holds no video stream (e.g. an audio-only file)."""


class NoFramesError(VideoError):
    """The video stream holds no decodable frame."""


class InvalidFrameCountError(VidpressError, ValueError):
    """The number of frames or the sampling rate asked for is not usable (e.g. ``num_frames < 1``)."""


class UnsupportedModelError(VidpressError, TypeError):
    """The model class has no vidpress adapter; the message lists the supported classes."""


class BudgetError(VidpressError, ValueError):
    """A token budget cannot be met (larger than the input, or zero where at least one is required)."""


class IncompatibleStagesError(VidpressError, ValueError):
    """Two stages claim the same slot of a composed method."""


class UnknownMethodError(VidpressError, KeyError):
    """A method name or a method parameter is not known; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingVideosError(VidpressError, FileNotFoundError):
    """A benchmark's videos are not where the caller said (or no folder was given); the message names the
    folder and where the videos come from."""


class AlreadyAppliedError(VidpressError, RuntimeError):
    """vidpress is already installed on this model: one method per model at a time (compose stages instead)."""


class PromptTooLongError(VidpressError, ValueError):
    """The prompt (text and visual placeholders) plus the tokens to generate exceed the model's positions."""


class VidpressWarning(UserWarning):
    """Work goes on, but part of it is not what the method promises (e.g. a serving request's images, which a
    video method leaves uncompressed); the message says what and how to avoid it."""
