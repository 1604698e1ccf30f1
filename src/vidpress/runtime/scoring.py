"""fp32 attention rows for the stages, computed apart from the model's real (SDPA) attention.

Only the declared query rows are scored against one layer's keys, so the full n x n matrix is never formed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_rows(
    query: Tensor, keys: Tensor, scaling: float, *, row_positions: Tensor | None = None, key_mask: Tensor | None = None
) -> Tensor:
    """Head- and row-averaged softmax attention of ``query`` over ``keys``.

    Parameters
    ----------
    query : Tensor, shape (B, H, R, hd)
        Rotary-embedded query rows.
    keys : Tensor, shape (B, H_kv, n, hd)
        The layer's cached keys (grouped-query heads are repeated to H).
    row_positions : LongTensor, shape (R,), optional
        Position of each query row on the key axis; keys after it are masked (causality).
    key_mask : BoolTensor, shape (B, n), optional
        False for padding keys.

    Returns
    -------
    Tensor, shape (B, n), float32
        Softmax over all n keys, averaged over heads and rows.
    """
    groups = query.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(groups, dim=1) if groups > 1 else keys.float()
    logits = torch.matmul(query.float(), k.transpose(-1, -2)) * scaling  # (B, H, R, n)
    n = keys.shape[-2]
    if row_positions is not None:
        future = torch.arange(n, device=keys.device)[None, :] > row_positions[:, None]  # (R, n)
        logits = logits.masked_fill(future[None, None], float("-inf"))
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return logits.softmax(-1).mean(dim=(1, 2))
