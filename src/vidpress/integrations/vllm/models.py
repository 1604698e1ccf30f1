"""vLLM model classes that run a vidpress pre-LLM stage on each video's embeddings.

They subclass vLLM's own LLaVA-OneVision and Qwen2.5-VL under the same architecture names (registered by
:func:`vidpress.integrations.vllm.register`), so a checkpoint loads exactly as in vLLM; with no ``vidpress`` entry
in the model config they are vLLM's classes. Their processors (:mod:`.processors`) give each video the declared
count of placeholders of its method (the server's or the request's) when the prompt is built, before the video is
seen, and ``embed_multimodal`` returns exactly that many embeddings per video (:func:`~.serving.compress_video`).

- LLaVA-OneVision: frame tokens after vLLM's own projector and 2x2 pooling, then the newline. Positions are the
  compressed prompt's own (vLLM numbers the sequence it is given), i.e. the kept tokens are renumbered
  contiguously, as the reference implementations do.
- Qwen2.5-VL: each kept token carries its original (t, h, w) M-RoPE ids, appended to its embedding and put in
  place by vLLM's ``recompute_mrope_positions`` (the ``SupportsMultiModalPruning`` path EVS uses); the prompt's
  first positions are laid out by each item's placeholder count.
- Stages that score tokens by the vision encoder's attention (VisionZip, FastVID) get it from the tower through
  hooks on its last attention (SigLIP's fused ``qkv_proj`` output; Qwen2.5-VL's last, full-attention ViT block
  with its rotary embedding), recomputed in fp32 and pooled like the features; vLLM's modules are untouched.
- A stage that declares the only frames its plan can use (``encoded_frames``: uniform frame sampling) gets only
  those through the tower (frames; Qwen2.5-VL: temporal patches), laid back on the full grid with zeros
  elsewhere; a plan keeping a skipped frame raises (:func:`~vidpress.stages.check_encoded`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessingInfo,
)
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from ...adapters.encoder_attention import received_attention
from ...adapters.qwen2_5_vl import temporal_patch_rows
from ...errors import InvalidParameterError, VidpressError
from ...stages import lay_back
from ...tokens import VisualTokens
from .processors import LlavaOnevisionProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor
from .serving import ENTRY_FIELD, check_engine, compress_video, entry_stages


class _Entries:
    """Model mixin: each video's method comes with it, in the entry field its processor adds
    (:data:`~.serving.ENTRY_FIELD`: the request's own method, else the server's)."""

    _entries: Any = None

    def embed_multimodal(self, **kwargs: Any) -> Any:
        self._entries = kwargs.pop(ENTRY_FIELD, None)
        try:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        finally:
            self._entries = None

    def _video_stages(self, videos: int) -> list[Any]:
        return entry_stages(self._entries, self.vidpress, videos)  # type: ignore[attr-defined]


# -- LLaVA-OneVision ---------------------------------------------------------------------------------------------


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionProcessor, info=LlavaOnevisionProcessingInfo, dummy_inputs=LlavaOnevisionDummyInputsBuilder
)
class LlavaOnevision(_Entries, LlavaOnevisionForConditionalGeneration):
    """vLLM's ``LlavaOnevisionForConditionalGeneration`` with a vidpress pre-LLM stage on each video.

    Raises (at engine start-up; the API server has refused the same already, in one line)
    ------
    UnknownMethodError, InvalidParameterError, BudgetError, UnsupportedModelError
        See :func:`~vidpress.integrations.vllm.serving.check_engine`.
    """

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vidpress = check_engine(vllm_config)

    def _encoder_attention_module(self) -> Any:
        """The tower's last attention: vLLM builds the tower only up to the feature layer the projector reads."""
        return [m for m in self.vision_tower.modules() if hasattr(m, "qkv_proj")][-1]

    def _process_video_pixels(self, inputs: Any) -> Sequence[Tensor]:
        pixels = inputs["pixel_values_videos"]
        frames = [len(v) for v in pixels] if not isinstance(pixels, Tensor) else [pixels.shape[1]] * pixels.shape[0]
        stages = self._video_stages(len(frames))
        if all(stage is None for stage in stages):
            # vLLM's own path returns (1, N, D) per video when a batch's videos differ in length, which its runner
            # refuses (the engine dies); each video as (N, D) is what it takes
            return [video.reshape(-1, video.shape[-1]) for video in super()._process_video_pixels(inputs)]
        attention = any(stage is not None and stage.needs.encoder_attention for stage in stages)
        captured: dict[str, tuple[Tensor, Tensor]] = {}
        hook = None
        if attention:
            # the fused projection's output, so queries and keys are not projected a second time
            module = self._encoder_attention_module()
            hook = module.qkv_proj.register_forward_hook(
                lambda _, args, out: captured.update(signals=self._encoder_signals(module, out[0]))
            )
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        per_frame = side * side
        # frames the plan can never use are not encoded (uniform frame sampling declares them)
        encoded = [None if s is None else s.encoded_frames(f, per_frame) for s, f in zip(stages, frames)]
        if any(e is not None for e in encoded) and not attention:
            full = [e if e is not None else list(range(f)) for e, f in zip(encoded, frames)]
            if isinstance(pixels, Tensor) and len({tuple(e) for e in full}) == 1:
                pixels = pixels[:, full[0]]
            else:
                pixels = [v[e] for v, e in zip(pixels, full)]
            inputs = {"pixel_values_videos": pixels}  # all vLLM's video path reads
        else:
            encoded = [None] * len(frames)
        try:
            videos = super()._process_video_pixels(inputs)
        finally:
            if hook is not None:
                hook.remove()
        received = keys = None
        if "signals" in captured:
            received, keys = captured["signals"]
            received, keys = received.split(frames), keys.split(frames)
        out = []
        for i, (emb, f, stage) in enumerate(zip(videos, frames, stages)):
            emb = emb.reshape(-1, emb.shape[-1])
            if stage is None:  # a request that asked for its videos uncompressed
                out.append(emb)
                continue
            frames_encoded = encoded[i]
            if frames_encoded is not None:
                emb = lay_back(emb, frames_encoded, f, per_frame)
            tokens = VisualTokens(
                emb[: f * per_frame].view(1, f, per_frame, -1),
                (side, side),
                extra=emb[f * per_frame :][None],
                attention=None if received is None else received[i][None],
                keys=None if keys is None else keys[i][None],
            )
            out.append(compress_video(stage, tokens, encoded=encoded[i])[0])
        return out

    def _encoder_signals(self, module: Any, qkv: Tensor) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys of the tower's last attention from its fused projection's
        output ``qkv`` (n, P, 3 * H * head_dim), pooled with the model's own 2x2 pooling: (n, T) and
        (n, T, head_dim)."""
        cls_row = self.config.vision_feature_select_strategy == "default"
        received, keys = received_attention(_split_qk, qkv, module.head_dim, module.scale, cls_row)
        if cls_row:
            received, keys = received[:, 1:], keys[:, 1:]
        pooled = self.apply_pooling(torch.cat([received[..., None], keys], dim=-1))
        return pooled[..., 0], pooled[..., 1:]


def _qwen_signals(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Attention received (s,) and head-averaged keys (s, head_dim) of one call of vLLM's Qwen2.5 vision
    attention, in its (window-permuted) token order: fp32 softmax(q k^T * scale) with its rotary embedding, within
    each ``cu_seqlens`` segment, averaged over heads and query rows."""
    names = ("x", "cu_seqlens", "rotary_pos_emb_cos", "rotary_pos_emb_sin")
    x, bounds, cos, sin = (args[i] if len(args) > i else kwargs[name] for i, name in enumerate(names))
    qkv, _ = module.qkv(x)  # (s, 1, 3 * H * hd)
    heads, head_dim = module.num_attention_heads_per_partition, module.hidden_size_per_attention_head
    qkv = qkv.view(x.shape[0], 3, heads, head_dim)
    qk = qkv[:, :2].permute(1, 0, 2, 3).contiguous()  # (2, s, H, hd): one "batch" row each for q and k
    if cos is not None and sin is not None:
        qk = module.apply_rotary_emb(qk, cos, sin)
    query, key = qk.float().transpose(1, 2).unbind(0)  # (H, s, hd)
    scale = head_dim**-0.5
    bounds = bounds.tolist()
    received = torch.cat(
        [
            torch.softmax(query[:, a:b] @ key[:, a:b].transpose(1, 2) * scale, -1).mean((0, 1))
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
    )
    return received, key.mean(0)


def _with_signals(model: Any, encode: Any) -> tuple[Any, dict[str, Any]]:
    """``encode()`` with the Qwen ViT's last attention hooked: its output and what was captured, the tower's
    ``grid`` and the ``signals`` (attention received, keys) averaged over each merge unit, in the tower's order."""
    captured: dict[str, Any] = {}
    hooks = [
        model.visual.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(grid=args[1] if len(args) > 1 else kwargs["grid_thw"]),
            with_kwargs=True,
        ),
        model.visual.blocks[-1].attn.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(signals=_qwen_signals(module, args, kwargs)),
            with_kwargs=True,
        ),
    ]
    try:
        out = encode()
    finally:
        for hook in hooks:
            hook.remove()
    received, keys = captured["signals"]
    unit = model.visual.spatial_merge_unit
    captured["signals"] = received.view(-1, unit).mean(1), keys.view(-1, unit, keys.shape[-1]).mean(1)
    return out, captured


def _grids(model: Any, mm_features: list[Any]) -> list[tuple[int, int, int, int, float, int]]:
    """(offset, t, h, w, temporal factor, placeholders) of each media item in prompt order, from vLLM's own
    grid iterator; the placeholder count is the item's length in the prompt (a compressed video's is shorter)."""
    lengths = {f.mm_position.offset: f.mm_position.length for f in mm_features}
    return [(o, t, h, w, f, lengths[o]) for o, t, h, w, f in model.iter_mm_grid_thw(mm_features)]


def _split_qk(qkv: Tensor) -> tuple[Tensor, Tensor]:
    query, key, _ = qkv.chunk(3, dim=-1)
    return query, key


# -- Qwen2.5-VL --------------------------------------------------------------------------------------------------


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class Qwen2_5_VL(_Entries, Qwen2_5_VLForConditionalGeneration):
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

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vidpress = check_engine(vllm_config)
        if self.vidpress.stage is None:
            return
        # vLLM's runner recomputes M-RoPE positions for pruned media when pruning is declared in the multimodal
        # config; the rate only switches that path on here (the count is the stage's).
        self.is_multimodal_pruning_enabled = True
        vllm_config.model_config.multimodal_config.video_pruning_rate = 0.5

    def _process_video_input(self, video_input: Any) -> Any:
        self._vidpress_signals = None
        self._vidpress_encoded = None
        stages = self._video_stages(len(video_input["video_grid_thw"]))
        self._vidpress_stages = stages
        if self.vidpress.stage is None:
            return super()._process_video_input(video_input)
        if not any(stage is not None and stage.needs.encoder_attention for stage in stages):
            return self._encode_used_patches(video_input, stages)
        out, captured = _with_signals(self, lambda: super(Qwen2_5_VL, self)._process_video_input(video_input))
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
        signals = getattr(self, "_vidpress_signals", None)
        if signals is not None:
            signals = tuple(x.split([len(e) for e in video_embeds_split]) for x in signals)
        out = []
        for i, (emb, size, second, stage) in enumerate(
            zip(video_embeds_split, video_input["video_grid_thw"].tolist(), seconds.long(), self._vidpress_stages)
        ):
            t, h, w = size[0], size[1] // merge, size[2] // merge
            tokens = VisualTokens(
                emb.view(1, t, h * w, -1),
                (h, w),
                extra=emb.new_zeros(1, 0, emb.shape[-1]),
                attention=None if signals is None else signals[0][i].view(1, t, h * w),
                keys=None if signals is None else signals[1][i].view(1, t, h * w, -1),
            )
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


# -- Qwen3-VL ----------------------------------------------------------------------------------------------------


@MULTIMODAL_REGISTRY.register_processor(
    Qwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class Qwen3VL(_Entries, Qwen3VLForConditionalGeneration):
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

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vidpress = check_engine(vllm_config)
        if self.vidpress.stage is None:
            return
        # vLLM's pruned-video path (prompt span, embeddings with positions) and its runner's position
        # recomputation switch on with pruning; the count is the stage's.
        self.is_multimodal_pruning_enabled = True
        self.video_pruning_rate = vllm_config.model_config.multimodal_config.video_pruning_rate = 0.5

    def _process_video_input(self, video_input: Any) -> Any:
        self._vidpress_signals = None
        stages = self._video_stages(len(video_input["video_grid_thw"]))
        self._vidpress_stages = stages
        if self.vidpress.stage is None or not any(s is not None and s.needs.encoder_attention for s in stages):
            return super()._process_video_input(video_input)
        out, captured = _with_signals(self, lambda: super(Qwen3VL, self)._process_video_input(video_input))
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
        signals = self._vidpress_signals
        if signals is not None:
            signals = tuple(x.split([len(e) for e in video_embeds_split]) for x in signals)
        out = []
        for i, (emb, size, stage) in enumerate(
            zip(video_embeds_split, video_input["video_grid_thw"].tolist(), self._vidpress_stages)
        ):
            t, h, w = size[0], size[1] // merge, size[2] // merge
            main, deepstack = emb[:, : self.visual_dim], emb[:, self.visual_dim :]
            if stage is None:  # a request that asked for its videos uncompressed
                kept, source = emb, torch.arange(len(emb))
            else:
                tokens = VisualTokens(
                    main.reshape(1, t, h * w, -1),
                    (h, w),
                    extra=main.new_zeros(1, 0, main.shape[-1]),
                    attention=None if signals is None else signals[0][i].view(1, t, h * w),
                    keys=None if signals is None else signals[1][i].view(1, t, h * w, -1),
                )
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
