"""What every family's vLLM class shares: the per-request method entry, and the Qwen ViTs' attention signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ....tokens import VisualTokens
from ..serving import ENTRY_FIELD, check_engine, entry_stages


class Entries:
    """Model mixin: the server's method, checked when the engine builds the model (:func:`~..serving.check_engine`
    raises there), and each video's method with it, in the entry field its processor adds
    (:data:`~..serving.ENTRY_FIELD`: the request's own method, else the server's)."""

    _entries: Any = None

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]
        self.vidpress = check_engine(vllm_config)

    def embed_multimodal(self, **kwargs: Any) -> Any:
        self._entries = kwargs.pop(ENTRY_FIELD, None)
        try:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        finally:
            self._entries = None

    def _video_stages(self, videos: int) -> list[Any]:
        return entry_stages(self._entries, self.vidpress, videos)


class PrunedMedia(Entries):
    """Model mixin for the Qwen families: with a method set, vLLM's path for pruned videos is switched on (the
    embeddings carry their tokens' M-RoPE ids and the runner recomputes the prompt's positions from them); the rate
    only switches that path on, the count is the stage's."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.vidpress.stage is None:
            return
        self.is_multimodal_pruning_enabled = True
        self.video_pruning_rate = vllm_config.model_config.multimodal_config.video_pruning_rate = 0.5


def qwen_vit_signals(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
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


def with_vit_signals(model: Any, encode: Any) -> tuple[Any, dict[str, Any]]:
    """``encode()`` with the Qwen ViT's last attention hooked: its output and what was captured, the tower's
    ``grid`` and the ``signals`` (attention received, keys) averaged over each merge unit, in the tower's order."""
    captured: dict[str, Any] = {}
    hooks = [
        model.visual.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(grid=args[1] if len(args) > 1 else kwargs["grid_thw"]),
            with_kwargs=True,
        ),
        model.visual.blocks[-1].attn.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(signals=qwen_vit_signals(module, args, kwargs)),
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


def split_signals(signals: tuple[Tensor, Tensor] | None, embeds: Sequence[Tensor]) -> list[tuple | None]:
    """The ViT's signals of a batch (:func:`with_vit_signals`, in the embeddings' order) cut per video, one entry
    per tensor of ``embeds`` (None for each when there are none)."""
    if signals is None:
        return [None] * len(embeds)
    return list(zip(*(x.split([len(e) for e in embeds]) for x in signals)))


def qwen_video_tokens(
    embeds: Tensor, grid: Sequence[int], merge: int, signals: tuple[Tensor, Tensor] | None
) -> VisualTokens:
    """One video's merged embeddings ``(t * h * w, dim)`` as visual tokens ``(1, t, h * w, dim)`` on its merged
    grid (``grid`` is t, H, W in patches; ``merge`` the merger's side), with its signals (attention received
    ``(t * h * w,)``, keys ``(t * h * w, head_dim)``) when the stage reads them."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    return VisualTokens(
        embeds.reshape(1, t, h * w, -1),
        (h, w),
        extra=embeds.new_zeros(1, 0, embeds.shape[-1]),
        attention=None if signals is None else signals[0].view(1, t, h * w),
        keys=None if signals is None else signals[1].view(1, t, h * w, -1),
    )
