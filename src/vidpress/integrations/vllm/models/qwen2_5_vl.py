"""Qwen2.5-VL in vLLM with a vidpress pre-LLM stage: each kept token carries its original (t, h, w) M-RoPE ids,
appended to its embedding and put in place by vLLM's ``recompute_mrope_positions`` (the
``SupportsMultiModalPruning`` path EVS uses); the prompt's first positions are laid out by each item's placeholder
count. Encoder attention comes from the ViT's last, full-attention block with its rotary embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from ....adapters.qwen2_5_vl import temporal_patch_rows
from ....errors import InvalidParameterError
from ....stages import lay_back
from ..processors import Qwen2_5_VLProcessor
from ..serving import compress_video
from .common import PrunedMedia, qwen_video_tokens, split_signals, with_vit_signals


def _grids(model: Any, mm_features: list[Any]) -> list[tuple[int, int, int, int, float, int]]:
    """(offset, t, h, w, temporal factor, placeholders) of each media item in prompt order, from vLLM's own
    grid iterator; the placeholder count is the item's length in the prompt (a compressed video's is shorter)."""
    lengths = {f.mm_position.offset: f.mm_position.length for f in mm_features}
    return [(o, t, h, w, f, lengths[o]) for o, t, h, w, f in model.iter_mm_grid_thw(mm_features)]


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class Qwen2_5_VL(PrunedMedia, Qwen2_5_VLForConditionalGeneration):
    """vLLM's ``Qwen2_5_VLForConditionalGeneration`` with a vidpress pre-LLM stage on each video; kept tokens keep
    their (t, h, w) M-RoPE ids.

    Stages that score tokens by the vision encoder's attention read it from the ViT's last block (a
    full-attention block: each temporal patch attends within itself), recomputed in fp32 with its rotary
    embedding, averaged over heads, query rows and each 2x2 merge unit, in the merged tokens' order.

    Raises (at engine start-up; the API server has refused the same already, in one line)
    ------
    UnknownMethodError, InvalidParameterError, BudgetError, UnsupportedModelError
        See :func:`~vidpress.integrations.vllm.serving.check_engine` (a stage that renumbers its tokens among
        them: M-RoPE needs their ids).
    """

    def _process_video_input(self, video_input: Any) -> Any:
        self._vidpress_signals = None
        self._vidpress_encoded = None
        stages = self._video_stages(len(video_input["video_grid_thw"]))
        self._vidpress_stages = stages
        if self.vidpress.stage is None:
            return super()._process_video_input(video_input)
        if not any(stage is not None and stage.needs.encoder_attention for stage in stages):
            return self._encode_used_patches(video_input, stages)
        out, captured = with_vit_signals(self, lambda: super(Qwen2_5_VL, self)._process_video_input(video_input))
        received, keys = captured["signals"]
        grid = captured["grid"]
        grid = grid.tolist() if isinstance(grid, Tensor) else grid
        reverse = self.visual.prepare_encoder_metadata(grid)["reverse_indices"].to(received.device)
        self._vidpress_signals = (received[reverse], keys[reverse])
        return out

    def _encode_used_patches(self, video_input: Any, stages: list[Any]) -> Any:
        """vLLM's video path on the temporal patches the stage can use (uniform frame sampling declares them), when
        every video of the batch has that stage and one grid; each video's merged tokens then laid back on its full
        grid with zeros elsewhere."""
        grids, stage = video_input["video_grid_thw"], stages[0]
        merge = self.visual.spatial_merge_size
        t, h, w = (int(x) for x in grids[0])
        encoded = None if stage is None else stage.encoded_frames(t, (h // merge) * (w // merge))
        pixels = video_input.get("pixel_values_videos")
        same = len({id(s) for s in stages}) == 1 and len({tuple(g.tolist()) for g in grids}) == 1
        if encoded is None or pixels is None or not same:
            return super()._process_video_input(video_input)
        rows = temporal_patch_rows(grids.tolist(), encoded)
        sliced = grids.clone()
        sliced[:, 0] = len(encoded)
        kept = {"type": "pixel_values_videos", "video_grid_thw": sliced}
        kept["pixel_values_videos"] = pixels[torch.tensor(rows, device=pixels.device)]
        per_frame = (h // merge) * (w // merge)
        self._vidpress_encoded = encoded
        return tuple(lay_back(e, encoded, t, per_frame) for e in super()._process_video_input(kept))

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[Tensor, int]:
        """The prompt's provisional (3, N) M-RoPE positions and their delta, laid out by each item's placeholder
        count.

        vLLM's own layout gives every video its full (t, h, w) grid, so with a video holding fewer placeholders
        the next item's text span comes out negative and the request kills the engine (several videos in one
        prompt). Here each item takes the first ``length`` positions of its grid, in vLLM's raster order (the
        whole grid when uncompressed, so these equal vLLM's there), and the text continues after the largest id;
        :meth:`recompute_mrope_positions` then puts the kept tokens' original ids, and the text after them, in
        place once the embeddings are known.
        """
        if not self.is_multimodal_pruning_enabled:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        spans, start, next_id = [], 0, 0
        for offset, t, h, w, t_factor, length in _grids(self, mm_features):
            spans.append(torch.arange(offset - start).expand(3, -1) + next_id)
            next_id += offset - start
            grid = torch.stack(
                torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            ).flatten(1)[:, :length]
            grid[0] = (grid[0] * t_factor).long()
            spans.append(grid + next_id)
            next_id = int(spans[-1].max()) + 1 if length else next_id
            start = offset + length
        spans.append(torch.arange(len(input_tokens) - start).expand(3, -1) + next_id)
        positions = torch.cat(spans, dim=1)
        return positions, int(positions.max()) + 1 - len(input_tokens) if positions.numel() else 0

    def recompute_mrope_positions(
        self, input_ids: Any, multimodal_embeddings: Sequence[Tensor], mrope_positions: Tensor, num_computed_tokens: int
    ) -> tuple:
        """vLLM's recomputation, with one boundary fixed: a prefill chunk that ends just after
        ``<|vision_start|>`` (none of its media computed yet) makes vLLM's helper look for a later vision start and
        fail; starting one token earlier, at that vision start, gives the media its place."""
        if self.vidpress.stage is not None and 0 < num_computed_tokens < len(input_ids):
            previous = input_ids[num_computed_tokens - 1]
            if int(previous) == self.config.vision_start_token_id:
                num_computed_tokens -= 1
        return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)

    def _postprocess_video_embeds_evs(self, video_embeds_split: Sequence[Tensor], video_input: Any) -> tuple:
        """Each video through the stage, with the kept tokens' (t, h, w) ids and the grid width appended as 4
        channels (vLLM's layout for pruned media)."""
        if self.vidpress.stage is None:  # vLLM's own pruning (EVS, --video-pruning-rate), untouched
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise InvalidParameterError(
                "Qwen2.5-VL video inputs need second_per_grid_ts for their M-RoPE ids; pass the video's metadata"
            )
        signals = split_signals(getattr(self, "_vidpress_signals", None), video_embeds_split)
        out = []
        for emb, size, second, stage, signal in zip(
            video_embeds_split, video_input["video_grid_thw"].tolist(), seconds.long(), self._vidpress_stages, signals
        ):
            tokens = qwen_video_tokens(emb, size, merge, signal)
            if stage is None:  # a request that asked for its videos uncompressed: every token at its own ids
                kept, source = emb, torch.arange(len(emb))
            else:
                kept, source = compress_video(stage, tokens, encoded=self._vidpress_encoded)
            positions = compute_mrope_for_media(
                size,
                merge,
                tokens_per_second=self.config.vision_config.tokens_per_second,
                video_second_per_grid=second.item(),
            )[source]
            out.append(torch.cat([kept, positions.to(kept.device, kept.dtype)], dim=1))
        return tuple(out)
