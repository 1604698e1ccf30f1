"""What rides with the visual tokens through a pre-LLM plan: values the model attaches to each token that no stage
reads (Qwen3-VL's DeepStack features), kept, merged and dropped exactly as the plan keeps, merges and drops the
tokens. Used by the runtime and by the vLLM plugin alike."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import IncompatibleStagesError
from ..selection import Selection
from ..tokens import PackedTokens


def _gather(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(1, index.to(values.device)[..., None].expand(-1, -1, values.shape[-1]))


def carry(plan: Selection | PackedTokens, values: Tensor, features: Tensor, stage: str) -> Tensor:
    """``values`` (B, N, C) of the N frame tokens after ``plan``: (B, K, C) for its K visual tokens, in its order.

    A selection gathers them; a packed block combines them as its tokens combine the frame tokens
    (``PackedTokens.members``), or, declaring none, takes each token's ``source`` after checking that every token
    is its source's ``features`` (B, N, D) unchanged.

    Raises
    ------
    IncompatibleStagesError
        A packed block that merges tokens without declaring their members (``stage`` names it): what rides with
        them cannot follow an unknown merge.
    """
    if isinstance(plan, Selection):
        return _gather(values, plan.keep)
    count = plan.num_visual
    if plan.members is not None:
        return torch.stack([m.combine(values[b], count) for b, m in enumerate(plan.members)]).to(values.dtype)
    source = None if plan.source is None else plan.source[:, :count]
    if source is None or not torch.equal(plan.features[:, :count], _gather(features, source).to(plan.features.dtype)):
        raise IncompatibleStagesError(
            f"{stage} merges tokens without declaring their members (PackedTokens.members); this model adds "
            "DeepStack features to each visual token, which cannot follow an unknown merge"
        )
    return _gather(values, source)
