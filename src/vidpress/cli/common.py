"""What the commands share: the consoles, the bundled clip, option help and argument parsing."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(width=max(120, Console().width))
err = Console(stderr=True, width=max(120, Console().width))


MODEL_HELP = (
    "default | testbed | random | random-llava-next-video | random-qwen2.5-vl | random-qwen3-vl | "
    "random-qwen3-vl-moe | random:<preset> | local checkpoint dir | hub id."
)


def bundled_clip() -> Path:
    """The short real clip shipped with vidpress (NASA footage, public domain)."""
    return Path(str(resources.files("vidpress") / "assets" / "nasa_13013_clip.mp4"))


MAX_SIDE_HELP = "Decode frames with the longer side at most this many pixels (bounds memory; 0: full resolution)."


def load_clip(path: Path, frames: int, max_side: int, progress: bool = False) -> tuple[Any, list[str]]:
    """The sampled video, and what :func:`~vidpress.io.video.load_video` warned about it, as notes to print."""
    import warnings

    from ..io.video import VideoWarning, load_video

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VideoWarning)
        clip = load_video(path, frames, max_side=max_side or None, progress=progress)
    for w in caught:
        if not issubclass(w.category, VideoWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clip, [str(w.message) for w in caught if issubclass(w.category, VideoWarning)]


def for_model(method: Any, name: str, settings: dict[str, Any], model: Any, notes: list[str]) -> Any:
    """``method`` as the commands run it on ``model`` when a default of it cannot run there, with a note saying so:
    ToMe maps its merged tokens back onto the model's grid (``grid=True``) on a model that pools before its
    projector (LLaVA-NeXT-Video), unless ``grid`` was set."""
    from ..adapters.registry import adapter_for
    from ..methods import get_method

    if name == "tome" and "grid" not in settings and not adapter_for(model).encodes_at_any_resolution:
        notes.append("ToMe runs with grid=True: this model pools its features before its projector")
        return get_method(name, **settings, grid=True)
    return method


def check_plots(out: Path) -> None:
    """Fail before any work when a PNG cannot be written to ``out``: matplotlib missing, no such folder, a folder in
    its place, or no permission to write it (a file is created there and removed again)."""
    import importlib.util

    from ..errors import VidpressError

    if importlib.util.find_spec("matplotlib") is None:
        raise VidpressError("drawing needs matplotlib: pip install 'vidpress[plots]'")
    if not out.parent.is_dir():
        raise OSError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another --out")
    if out.is_dir():
        raise OSError(f"cannot write {out}: it is a folder; give a file name such as {out / 'events.png'}")
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
    if not existed:
        out.unlink()


def parse_set(values: list[str]) -> dict[str, Any]:
    """``["k=0.7", "mode=faithful", "layers=(3,10,19)"]`` -> ``{"k": 0.7, "mode": "faithful", "layers": (3, 10, 19)}``:
    JSON or Python literals (numbers, true/false, lists, tuples) are parsed, anything else stays a string."""
    from ..method import parse_value

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes NAME=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_value(raw)
    return out
