"""DyCoke stage 2, dynamic KV-cache pruning at decode time — Tao et al., CVPR 2025, §3.3; docs/methods.md

At every decoding step the attention of the token being decoded at layer L-1 (fp32, averaged over heads)
ranks the visual KV entries; layers L.. attend only to the top ``int(n * (1 - P))`` of them plus every
non-visual entry. The cache keeps every entry, so a token left out at one step can come back later.
Re-selection happens when the attention distribution changed: cosine(s_t, s_{t-1}) < tau.

faithful vs fixed:

- ``faithful``: when attention is stable (similarity >= tau) *no* selection is made and that step runs with
  the full cache (the reference code's behaviour, almost certainly unintended); the last visual token is
  never a candidate (the reference's ``image_token_length = N - 1`` off-by-one) and is always attended, and
  the stability cosine is computed over those N - 1 candidates only (KD-TAO/DyCoke
  ``llava/model/language_model/modeling_qwen2.py`` ``PrunableDynamicCache.dycoke_pruning`` /
  ``update_cache`` at ``dd74634``; keep count ``int((N - 1) * (1 - P))``).
- ``fixed`` (default): a stable step reuses the previous selection, as the paper describes; every visual
  token is a candidate.

Both keep the previous attention per request (the reference carries it across samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..._checks import check_layer, check_mode, check_ratio
from ...selection import Selection
from ...stages import DecodeStage, Needs
from ...tokens import LayerSignals, StageContext


@dataclass(frozen=True)
class DynamicKV(DecodeStage):
    """DyCoke's decode-time visual-KV selection.

    Parameters
    ----------
    l : int
        DyCoke's L (>= 1): layers 0..L-1 always attend to the full cache; the scores come from layer L-1.
        Default 3.
    p : float
        DyCoke's P in [0, 1]: the fraction of visual KV entries left out at each step. Default 0.7.
    tau : float
        Attention-change threshold in [0, 1] (hard-coded 0.9 in the reference). Default 0.9.
    mode : {"fixed", "faithful"}
        See the module docstring. Default "fixed".

    Shapes
    ------
    ``signals.scores`` is (B, N) over the N visual entries; the plan indexes those N entries.
    """

    l: int = 3
    p: float = 0.7
    tau: float = 0.9
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_layer("l", self.l, minimum=1)
        check_ratio("p", self.p, symbol="DyCoke P")
        check_ratio("tau", self.tau, symbol="DyCoke tau")
        check_mode(self.mode)
        object.__setattr__(self, "needs", Needs(query_rows="last", score_layers=(self.l - 1,)))

    @property
    def first_layer(self) -> int:
        return self.l

    def budget(self, n: int) -> int:
        """Visual KV entries attended at layers >= L when a selection is made, out of ``n``."""
        if self.mode == "faithful":
            return int((n - 1) * (1 - self.p)) + 1 if n else 0
        return int(n * (1 - self.p))

    def __call__(self, signals: LayerSignals, ctx: StageContext) -> Selection | None:
        scores = signals.scores.float()  # (B, N)
        n = scores.shape[-1]
        memory = ctx.memory(self)
        # The reference compares (and ranks) only its N - 1 candidate entries: the last visual token is left out.
        compared = scores[:, : n - 1] if self.mode == "faithful" else scores
        previous = memory.get("scores")
        if previous is not None and previous.shape == compared.shape:
            similarity = torch.nn.functional.cosine_similarity(compared, previous, dim=-1)  # (B,)
        else:
            similarity = torch.zeros(scores.shape[0], device=scores.device)
        memory["scores"] = compared
        stable = bool((similarity >= self.tau).all())
        if stable:
            if self.mode == "faithful":
                memory["selection"] = None
                return None
            if memory.get("selection") is not None:
                return memory["selection"]
        if self.mode == "faithful":
            candidates = Selection.top_k(scores[:, : n - 1], self.budget(n) - 1).keep
            last = torch.full((scores.shape[0], 1), n - 1, device=scores.device, dtype=torch.long)
            selection = Selection.from_indices(torch.cat([candidates, last], dim=1), n)
        else:
            selection = Selection.top_k(scores, self.budget(n))
        memory["selection"] = selection
        return selection
