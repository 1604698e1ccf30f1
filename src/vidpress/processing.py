"""Video inputs for LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL and Qwen3-VL without torchvision.

transformers' ``LlavaOnevisionProcessor`` needs torchvision for video. Where a checkpoint's own processor
loads, vidpress uses it; otherwise :class:`OfflineVideoProcessor` stands in with the same call surface
(``apply_chat_template``, ``__call__(text=, videos=)``, ``batch_decode``) and the same outputs: frames resized
to the square input size (bicubic, antialiased), rescaled and normalised, and each ``<video>`` expanded to
``F * ceil(side / 2) ** 2 + 1`` placeholders, as LLaVA-OV's processor does (``layout="llava_onevision"``), or
``F * (side // 2) ** 2`` for the LLaVA-NeXT-Video layout (average pooling, no newline).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature

from .errors import InvalidFrameCountError

CONFIG_NAME = "vidpress_processor.json"


class OfflineVideoProcessor:
    """Tokenizer + chat template + frame preprocessing for LLaVA-OneVision-style models.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Must know ``video_token`` as a single token.
    image_size : int
        Square frame side in pixels fed to the vision tower.
    patch_size : int
        Vision patch size; the grid is ``image_size // patch_size`` patches per side.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_size: int,
        patch_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        chat_template: str | None = None,
        video_token: str = "<video>",
        layout: str = "llava_onevision",
    ):
        self.tokenizer, self.image_size, self.patch_size, self.layout = tokenizer, image_size, patch_size, layout
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.chat_template = chat_template or tokenizer.chat_template
        self.video_token = video_token
        self.tokenizer.padding_side = "left"

    def tokens_per_video(self, num_frames: int) -> int:
        side = self.image_size // self.patch_size
        if self.layout == "llava_next_video":
            return num_frames * (side // 2) ** 2
        return num_frames * math.ceil(side / 2) ** 2 + 1

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True, **kw: Any) -> str:
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kw,
        )

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (F, 3, S, S) float32, resized and normalised."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = (
            torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 255)
            / 255.0
        )
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(
        self,
        text: str | list[str],
        videos: Sequence[np.ndarray],
        return_tensors: str = "pt",
        timestamps: Sequence[Sequence[float] | None] | None = None,
        **kw: Any,
    ) -> BatchFeature:
        """Tokenise ``text`` with each video marker expanded, and the videos' tensors. ``timestamps``: per video,
        each frame's time in seconds from the stream's start (only layouts that write times into the prompt use
        them; default ``frame index / fps``)."""
        texts = [text] if isinstance(text, str) else list(text)
        marker = self.video_marker
        if len(videos) != sum(t.count(marker) for t in texts):
            raise ValueError(
                f"{len(videos)} videos for {sum(t.count(marker) for t in texts)} {marker} markers in the text"
            )
        if timestamps is not None and len(timestamps) != len(videos):
            raise ValueError(f"{len(timestamps)} timestamp lists for {len(videos)} videos")

        expanded, i = [], 0
        for t in texts:
            parts = t.split(marker)
            out = parts[0]
            for part in parts[1:]:
                times = None if timestamps is None else timestamps[i]
                out += self.video_prompt(len(videos[i]), times) + part
                i += 1
            expanded.append(out)
        encoded = self.tokenizer(expanded, return_tensors="pt", padding=True)
        return BatchFeature({**encoded, **self.video_inputs(videos, encoded["input_ids"])})

    @property
    def video_marker(self) -> str:
        """What the chat template writes for a video, replaced by :meth:`video_prompt`."""
        return self.video_token

    def video_prompt(self, num_frames: int, timestamps: Sequence[float] | None = None) -> str:
        """The prompt text of one video of ``num_frames`` frames: its placeholders (and what the layout puts
        between them)."""
        return self.video_token * self.tokens_per_video(num_frames)

    def video_inputs(self, videos: Sequence[np.ndarray], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's video tensors: ``pixel_values_videos`` (B, F, 3, S, S).

        Raises
        ------
        InvalidFrameCountError
            Videos with different frame counts (one (B, F, ...) tensor holds the batch).
        """
        counts = [len(v) for v in videos]
        if len(set(counts)) > 1:
            raise InvalidFrameCountError(
                f"the videos of one batch must have the same number of frames, got {counts}; "
                "sample every video with the same count or process them one at a time"
            )
        return {"pixel_values_videos": torch.stack([self.preprocess(v) for v in videos])}

    def batch_decode(self, *args: Any, **kw: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kw)

    def decode(self, *args: Any, **kw: Any) -> str:
        return self.tokenizer.decode(*args, **kw)

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(directory)
        config = dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            image_mean=self.image_mean,
            image_std=self.image_std,
            chat_template=self.chat_template,
            video_token=self.video_token,
            layout=self.layout,
            fps=getattr(self, "fps", None),
        )
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OfflineVideoProcessor:
        """From a directory saved by :meth:`save_pretrained` (a checkpoint's own files go through its family's
        adapter: ``vidpress.models.loading.offline_processor``).

        Raises
        ------
        FileNotFoundError
            The directory has no ``vidpress_processor.json``.
        """
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not (directory / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; it was not saved by vidpress")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        saved = json.loads((directory / CONFIG_NAME).read_text())
        fps = saved.pop("fps", None)
        if saved["layout"] in ("qwen2_5_vl", "qwen3_vl"):
            kind = OfflineQwenVideoProcessor if saved["layout"] == "qwen2_5_vl" else OfflineQwen3VideoProcessor
            return kind(
                tokenizer,
                saved["image_size"],
                saved["chat_template"],
                fps or 1.0,
                saved["image_mean"],
                saved["image_std"],
            )
        return OfflineVideoProcessor(tokenizer, **saved)


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class OfflineQwenVideoProcessor(OfflineVideoProcessor):
    """Qwen2.5-VL / Qwen2-VL video inputs without torchvision (their video processor needs it).

    Frames are resized to a square ``image_size`` (a multiple of patch * merge = 28), CLIP-normalised, padded to
    an even count by repeating the last frame, and patchified in Qwen2-VL's layout (2-frame temporal patches,
    2x2 merge windows contiguous). ``<|video_pad|>`` expands to ``ceil(F / 2) * (side / 28) ** 2`` placeholders.

    Returns input_ids, attention_mask, ``pixel_values_videos`` (sum of T*h*w over videos, 3*2*14*14),
    ``video_grid_thw`` (V, 3), ``second_per_grid_ts`` (V,) = 2 / ``fps`` and ``mm_token_type_ids`` (B, S), 2 at
    video placeholders.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_size: int,
        chat_template: str | None = None,
        fps: float = 1.0,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ):
        if image_size % 28:
            raise ValueError(f"image_size must be a multiple of 28 for Qwen2.5-VL, got {image_size}")
        super().__init__(tokenizer, image_size, 14, image_mean, image_std, chat_template, "<|video_pad|>", "qwen2_5_vl")
        self.fps = fps

    def tokens_per_video(self, num_frames: int) -> int:
        return math.ceil(num_frames / 2) * (self.image_size // 28) ** 2

    def video_inputs(self, videos: Sequence[np.ndarray], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        patches, grids = [], []
        p = self.patch_size
        for video in videos:
            x = self.preprocess(video)  # (F, 3, S, S)
            if len(x) % 2:
                x = torch.cat([x, x[-1:]])
            t, side = len(x) // 2, self.image_size // p
            x = x.view(t, 2, 3, side // 2, 2, p, side // 2, 2, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
            patches.append(x.reshape(t * side * side, 3 * 2 * p * p))
            grids.append([t, side, side])
        video_id = self.tokenizer.convert_tokens_to_ids(self.video_token)
        return {
            "pixel_values_videos": torch.cat(patches),
            "video_grid_thw": torch.tensor(grids),
            "second_per_grid_ts": torch.tensor([2 / self.fps] * len(videos)),
            "mm_token_type_ids": (input_ids == video_id).int() * 2,
        }


class OfflineQwen3VideoProcessor(OfflineQwenVideoProcessor):
    """Qwen3-VL (and its MoE) video inputs without torchvision, in the prompt layout of transformers'
    ``Qwen3VLProcessor`` (5.x): the template's ``<|video_pad|>`` becomes, for each 2-frame temporal patch,
    ``<{t:.1f} seconds><|vision_start|>``, its ``(side / 32) ** 2`` ``<|video_pad|>`` placeholders and
    ``<|vision_end|>``, inside the template's own ``<|vision_start|>`` ... ``<|vision_end|>``; ``t`` is the mean
    time of the patch's first and last frame (an odd last frame repeated). Times come from ``timestamps`` (seconds
    from the stream's start, e.g. ``Video.timestamps``), else ``frame index / fps``.

    Frames are square ``image_size`` (a multiple of patch 16 * merge 2 = 32), normalised by mean/std 0.5, and
    patchified as Qwen2-VL's. Returns input_ids, attention_mask, ``pixel_values_videos``, ``video_grid_thw`` and
    ``mm_token_type_ids`` (2 at video placeholders; timestamps and vision start/end are text, 0).
    """

    def __init__(
        self,
        tokenizer: Any,
        image_size: int,
        chat_template: str | None = None,
        fps: float = 1.0,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ):
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 for Qwen3-VL, got {image_size}")
        OfflineVideoProcessor.__init__(
            self, tokenizer, image_size, 16, image_mean, image_std, chat_template, "<|video_pad|>", "qwen3_vl"
        )
        self.fps = fps

    def patch_times(self, num_frames: int, timestamps: Sequence[float] | None = None) -> list[float]:
        """Seconds of each temporal patch: the mean of its first and last frame's time."""
        times = [i / self.fps for i in range(num_frames)] if timestamps is None else [float(t) for t in timestamps]
        if len(times) != num_frames:
            raise ValueError(f"{len(times)} timestamps for a video of {num_frames} frames")
        if len(times) % 2:
            times.append(times[-1])
        return [(times[i] + times[i + 1]) / 2 for i in range(0, len(times), 2)]

    def video_prompt(self, num_frames: int, timestamps: Sequence[float] | None = None) -> str:
        per_patch = (self.image_size // 32) ** 2
        return "".join(
            f"<{t:.1f} seconds><|vision_start|>{self.video_token * per_patch}<|vision_end|>"
            for t in self.patch_times(num_frames, timestamps)
        )

    def tokens_per_video(self, num_frames: int) -> int:
        """Prompt tokens that replace the template's ``<|video_pad|>`` for a video at ``fps``: placeholders, times
        and vision start/end per temporal patch."""
        text = self.video_prompt(num_frames).replace(self.video_token, "")
        return math.ceil(num_frames / 2) * (self.image_size // 32) ** 2 + len(self.tokenizer(text)["input_ids"])

    def video_inputs(self, videos: Sequence[np.ndarray], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().video_inputs(videos, input_ids)
        del out["second_per_grid_ts"]  # Qwen3-VL writes times into the prompt instead
        return out
