"""vidpress: training-free visual-token compression for video LLMs in Hugging Face transformers.

    import vidpress
    with vidpress.apply(model, vidpress.DyCoke(k=0.7, l=3, p=0.7)) as run:
        model.generate(**inputs, max_new_tokens=64)
    print(run.report)
"""

from .accounting import PRESETS, Accounting, estimate
from .errors import (BudgetError, IncompatibleStagesError, InvalidFrameCountError, InvalidParameterError,
                     NoFramesError, NotAVideoError, NoVideoStreamError, UnknownMethodError, UnsupportedModelError,
                     VideoError, VideoNotFoundError, VidpressError)
from .io.video import Video, load_video
from .method import Method, Stages, apply, compose
from .methods import METHODS, DyCoke, METok, get_method
from .report import Report
from .selection import Selection

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "METHODS", "Accounting", "BudgetError", "DyCoke", "METok", "IncompatibleStagesError",
    "InvalidFrameCountError", "InvalidParameterError", "Method", "NoFramesError", "NoVideoStreamError",
    "NotAVideoError", "Report", "Selection", "Stages", "UnknownMethodError", "UnsupportedModelError", "Video",
    "VideoError", "VideoNotFoundError", "VidpressError", "apply", "compose", "estimate", "get_method", "load_video",
]
