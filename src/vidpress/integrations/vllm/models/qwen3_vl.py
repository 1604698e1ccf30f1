"""Qwen3-VL (dense and MoE) in vLLM with a vidpress pre-LLM stage, through vLLM's own path for pruned videos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY

from ....errors import VidpressError
from ..processors import Qwen3VLProcessor
from ..serving import compress_video
from .common import PrunedMedia, qwen_video_tokens, split_signals, with_vit_signals


@MULTIMODAL_REGISTRY.register_processor(
    Qwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class Qwen3VL(PrunedMedia, Qwen3VLForConditionalGeneration):
    """vLLM's ``Qwen3VLForConditionalGeneration`` with a vidpress pre-LLM stage on each video, through vLLM's own
    path for pruned videos (the one its EVS takes): the stage runs on the main embeddings, the DeepStack features
    (vLLM's extra channels) are kept and merged as the tokens are, the kept tokens go into their own frames between
    the ``<t seconds>`` text, and vLLM gives them their original (t, h, w) M-RoPE ids.

    Stages that score tokens by the vision encoder's attention read the ViT's last block, recomputed in fp32 with
    its rotary embedding, averaged over heads, query rows and each 2x2 merge unit (the ViT has no windows).

    Raises (at engine start-up; the API server has refused the same already, in one line)
    ------
    UnknownMethodError, InvalidParameterError, BudgetError, UnsupportedModelError
        See :func:`~vidpress.integrations.vllm.serving.check_engine`.
    """

    def _process_video_input(self, video_input: Any) -> Any:
        self._vidpress_signals = None
        stages = self._video_stages(len(video_input["video_grid_thw"]))
        self._vidpress_stages = stages
        if self.vidpress.stage is None or not any(s is not None and s.needs.encoder_attention for s in stages):
            return super()._process_video_input(video_input)
        out, captured = with_vit_signals(self, lambda: super(Qwen3VL, self)._process_video_input(video_input))
        self._vidpress_signals = captured["signals"]
        return out

    def recompute_mrope_positions(
        self, input_ids: Any, multimodal_embeddings: Sequence[Tensor], mrope_positions: Tensor, num_computed_tokens: int
    ) -> tuple:
        """The prompt's M-RoPE positions once its media (in this prefill chunk) are embedded: each item's rows at the
        ids its embeddings carry (vLLM's pruned layout: (t, h, w) relative to the item's first row), shifted to
        follow the text before it, and the text after it continuing from its largest id.

        vLLM's own helper finds each item by counting from the chunk start, which misplaces every item after the
        first when text or another item comes before it (a video after an image, two videos), and takes the
        ``<|vision_start|>`` transformers 5.x keeps before a video's first time for the one after it; its EVS fails
        or misplaces there too. Items are found here by the prompt's own tokens (:func:`qwen3_media_spans`).
        """
        if not self.is_multimodal_pruning_enabled:
            return super().recompute_mrope_positions(
                input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
            )
        return qwen3_recompute(
            torch.as_tensor(input_ids).cpu(), multimodal_embeddings, mrope_positions, num_computed_tokens, self.config
        )

    def _postprocess_video_embeds_evs(self, video_embeds_split: Sequence[Tensor], video_input: Any) -> tuple:
        """Each video through the stage: its span's embeddings (text of the times, the kept tokens in their frames,
        DeepStack channels, positions) as vLLM builds them for a pruned video."""
        if self.vidpress.stage is None:  # vLLM's own pruning (EVS, --video-pruning-rate), untouched
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        signals = split_signals(self._vidpress_signals, video_embeds_split)
        out = []
        for i, (emb, size, stage, signal) in enumerate(
            zip(video_embeds_split, video_input["video_grid_thw"].tolist(), self._vidpress_stages, signals)
        ):
            t, h, w = size[0], size[1] // merge, size[2] // merge
            main, deepstack = emb[:, : self.visual_dim], emb[:, self.visual_dim :]
            if stage is None:  # a request that asked for its videos uncompressed
                kept, source = emb, torch.arange(len(emb))
            else:
                tokens = qwen_video_tokens(main, size, merge, signal)
                kept, source = compress_video(stage, tokens, riders=deepstack[None] if deepstack.numel() else None)
            order = source.argsort()
            kept, source = kept[order.to(kept.device)], source[order]
            mask = torch.zeros(t * h * w, dtype=torch.bool)
            mask[source] = True
            if int(mask.sum()) != len(source):
                raise VidpressError(
                    f"{type(stage).__name__} put two tokens at one position; vLLM lays Qwen3-VL's kept tokens out "
                    "by their positions"
                )
            out.append(
                self._create_final_video_embeddings(
                    video_embeddings=kept,
                    num_tokens_per_frame=mask.view(t, h * w).sum(1).tolist(),
                    timestamps=video_input.timestamps[i],
                    video_grid_thw=size,
                    retention_mask=mask.to(kept.device),
                )
            )
        return tuple(out)


@MULTIMODAL_REGISTRY.register_processor(
    Qwen3VLProcessor, info=Qwen3VLMoeProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class Qwen3VLMoe(Qwen3VL, Qwen3VLMoeForConditionalGeneration):
    """vLLM's ``Qwen3VLMoeForConditionalGeneration`` with the same vidpress video path as :class:`Qwen3VL`."""


def qwen3_media_spans(ids: Tensor, config: Any) -> list[tuple[int, int]]:
    """(start, end) of each media item's prompt span in order, as vLLM places Qwen3-VL's pruned items: an image's
    run of ``<|image_pad|>``; a video's frames, from its first time to its last ``<|vision_end|>``, between the
    ``<|vision_start|>`` ... ``<|vision_end|>`` the prompt keeps around it.

    Raises
    ------
    VidpressError
        A video without those outer markers (a processor older than transformers 5.10's layout).
    """
    image, video = ids == config.image_token_id, ids == config.video_token_id
    start_token, end_token = config.vision_start_token_id, config.vision_end_token_id
    spans, i, n = [], 0, len(ids)
    while i < n:
        if image[i]:
            j = i
            while j < n and image[j]:
                j += 1
            spans.append((i, j))
            i = j
        elif ids[i] == start_token and i + 1 < n and not (image[i + 1] or video[i + 1] or ids[i + 1] == end_token):
            j = i + 1  # a video: frames until two vision ends in a row (the last frame's, then the outer one)
            while j + 1 < n and not (ids[j] == end_token and ids[j + 1] == end_token):
                j += 1
            if j + 1 >= n:
                raise VidpressError("a Qwen3-VL video span without its closing <|vision_end|>")
            spans.append((i + 1, j + 1))
            i = j + 2
        elif video[i]:
            raise VidpressError(
                "a Qwen3-VL video without the <|vision_start|> ... <|vision_end|> around its frames; use a processor "
                "of transformers >= 5.10"
            )
        else:
            i += 1
    return spans


def qwen3_recompute(
    ids: Tensor, embeddings: Sequence[Tensor], positions: Tensor, computed: int, config: Any
) -> tuple[list[Tensor], Tensor, int]:
    """vLLM's ``recompute_mrope_positions`` contract for Qwen3-VL's pruned layout: the embeddings without their 5
    position channels, the prompt's (3, N) positions, and the delta of the first generated token."""
    spans = qwen3_media_spans(ids, config)
    positions = positions.clone()
    n = positions.shape[1]
    first = next((k for k, (_, end) in enumerate(spans) if end > computed), len(spans))
    out = []
    for (start, _), item in zip(spans[first:], embeddings):
        out.append(item[:, :-5])
        if item.shape[0] == 0:
            continue
        ids_of_rows = item[:, -5:-2].long().T.to(positions.device)  # (3, rows) relative to the item's first row
        offset = max(computed - start, 0)
        base = int(positions[:, start - 1].max()) + 1 if start > 0 else 0
        stop = start + offset + ids_of_rows.shape[1]
        positions[:, start + offset : stop] = ids_of_rows + base
        following = int(positions[:, start:stop].max()) + 1
        positions[:, stop:] = torch.arange(n - stop, device=positions.device) + following
    delta = int(positions.max()) + 1 - n if n else 0
    return out, positions, delta
