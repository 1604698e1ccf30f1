"""vidpress: training-free visual-token compression for video LLMs in Hugging Face transformers.

import vidpress
with vidpress.apply(model, vidpress.DyCoke(k=0.7, l=3, p=0.7)) as run:
    model.generate(**inputs, max_new_tokens=64)
print(run.report)
"""

from .accounting import PRESETS, Accounting, estimate
from .errors import (
    AlreadyAppliedError,
    BudgetError,
    IncompatibleStagesError,
    InvalidFrameCountError,
    InvalidParameterError,
    NoFramesError,
    NotAVideoError,
    NoVideoStreamError,
    PromptTooLongError,
    UnknownMethodError,
    UnsupportedModelError,
    VideoError,
    VideoNotFoundError,
    VidpressError,
)
from .io.video import Video, load_video
from .method import Method, compose
from .methods import (
    METHODS,
    CDPruner,
    DyCoke,
    FastV,
    FastVID,
    HoliTom,
    METok,
    PyramidDrop,
    RandomTokens,
    ToMe,
    UniformFrames,
    UniformSpatial,
    VidCom2,
    VisionZip,
    apply,
    get_method,
)
from .report import Report
from .selection import Selection
from .stages import Stages
from .stages.decode.dynamic_kv import DynamicKV

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "METHODS",
    "Accounting",
    "AlreadyAppliedError",
    "BudgetError",
    "CDPruner",
    "DyCoke",
    "DynamicKV",
    "FastV",
    "FastVID",
    "HoliTom",
    "METok",
    "IncompatibleStagesError",
    "InvalidFrameCountError",
    "InvalidParameterError",
    "Method",
    "NoFramesError",
    "NoVideoStreamError",
    "NotAVideoError",
    "PromptTooLongError",
    "PyramidDrop",
    "RandomTokens",
    "Report",
    "Selection",
    "Stages",
    "ToMe",
    "UniformFrames",
    "UniformSpatial",
    "UnknownMethodError",
    "UnsupportedModelError",
    "Video",
    "VideoError",
    "VideoNotFoundError",
    "VidpressError",
    "VidCom2",
    "VisionZip",
    "apply",
    "compose",
    "estimate",
    "get_method",
    "load_video",
]
