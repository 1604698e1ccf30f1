"""Vision-encoder attention for stages that rank tokens by the attention they receive (VisionZip, FastVID).

The encoder keeps its own attention implementation (SDPA returns no weights): a forward pre-hook on the
scored attention module recomputes fp32 softmax(q k^T * scale) from the same input, a chunk of frames at a
time (SigLIP/CLIP/DINOv2 towers), or one attention segment at a time (Qwen's packed towers), so at most
``chunk * heads * P * P`` floats exist at once.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import VidpressError


def check_signals(received: Tensor, rows: int) -> None:
    """Raise unless the captured signals cover ``rows`` encoder sequences (frames of this request)."""
    if received.shape[0] != rows:
        raise VidpressError(
            f"the captured encoder attention covers {received.shape[0]} frames, this video has {rows}; "
            "run the model with the method installed (vidpress.apply) so vidpress sees the encoding"
        )


def encoder_signals(attention: Any, hidden: Tensor, cls_row: bool, chunk: int = 8) -> tuple[Tensor, Tensor]:
    """Attention received and head-averaged keys of one vision attention module.

    Parameters
    ----------
    attention : nn.Module
        A SigLIP/CLIP/DINOv2-style attention with ``q_proj``, ``k_proj``, ``head_dim`` and ``scale`` or
        ``scaling``.
    hidden : Tensor, shape (n, P, Dv)
        Its input: n frames of P encoder tokens.
    cls_row : bool
        Score by the first (CLS) token's attention row only (VisionZip on CLIP); otherwise average over every
        query row (VisionZip's rule for SigLIP, which has no CLS token).

    Returns
    -------
    received : Tensor, shape (n, P), float32
        Attention each token receives, averaged over heads (and query rows).
    keys : Tensor, shape (n, P, head_dim), float32
        The keys averaged over heads (VisionZip's merging metric).
    """
    head_dim = attention.head_dim
    scale = getattr(attention, "scale", None) or getattr(attention, "scaling", head_dim**-0.5)
    return received_attention(
        lambda part: (attention.q_proj(part), attention.k_proj(part)), hidden, head_dim, scale, cls_row, chunk
    )


def received_attention(
    project: Callable[[Tensor], tuple[Tensor, Tensor]],
    hidden: Tensor,
    head_dim: int,
    scale: float,
    cls_row: bool,
    chunk: int = 8,
) -> tuple[Tensor, Tensor]:
    """:func:`encoder_signals` for any attention whose queries and keys ``project`` computes from its input
    (``(n, P, H*head_dim)`` each): fp32 softmax(q k^T * scale), a chunk of frames at a time; returns the attention
    received (n, P) and the head-averaged keys (n, P, head_dim). Used with vLLM's fused ``qkv_proj`` towers too."""
    received, keys = [], []
    for part in hidden.split(chunk):
        shape = (*part.shape[:-1], -1, head_dim)
        query, key = project(part)
        query = query.reshape(shape).transpose(1, 2).float()
        key = key.reshape(shape).transpose(1, 2).float()
        rows = query[:, :, :1] if cls_row else query
        probs = torch.softmax(rows @ key.transpose(-1, -2) * scale, dim=-1)  # (n, H, R, P)
        received.append(probs.mean((1, 2)))
        keys.append(key.mean(1))
    return torch.cat(received), torch.cat(keys)


def merge_unit_signals(module: Any, args: tuple, kwargs: dict[str, Any], merge: int) -> tuple[Tensor, Tensor]:
    """Attention received and head-averaged keys of one call of a Qwen ViT attention (fused ``qkv``, vision RoPE,
    packed sequences): fp32 softmax(q k^T * scaling) within each segment of ``cu_seqlens`` (a temporal patch, or a
    window), averaged over heads and query rows, then over each ``merge x merge`` unit the patch merger fuses.

    Parameters
    ----------
    module : nn.Module
        The attention (``qkv``, ``num_heads``, ``scaling``), called as ``module(hidden_states, cu_seqlens=...,
        position_embeddings=(cos, sin))``.
    args, kwargs
        That call's arguments (from a forward pre-hook).
    merge : int
        The merger's ``spatial_merge_size``.

    Returns
    -------
    received : Tensor, shape (N,), float32
        Per merged (LLM) token, in the tower's token order.
    keys : Tensor, shape (N, head_dim), float32
    """
    hidden = args[0] if args else kwargs["hidden_states"]
    seq, heads = hidden.shape[0], module.num_heads
    query, key, _ = module.qkv(hidden).reshape(seq, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = kwargs["position_embeddings"]
    query, key = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision(query, key, cos, sin)
    query, key = query.float().transpose(0, 1), key.float().transpose(0, 1)  # (H, seq, head_dim)
    bounds = kwargs["cu_seqlens"].tolist()
    received = torch.cat(
        [
            torch.softmax(query[:, a:b] @ key[:, a:b].transpose(1, 2) * module.scaling, -1).mean((0, 1))
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
    )
    unit = merge * merge
    return received.view(-1, unit).mean(1), key.mean(0).view(-1, unit, key.shape[-1]).mean(1)
