"""DyCoke stage 1, temporal token merging (TTM) — Tao et al., CVPR 2025, §3.2; docs/methods.md

Frames are taken in windows of four (a, a+1, a+2, a+3). Frame a is kept whole; a+1 and a+2 keep the
``keep = int((1 - K) * T)`` positions least similar (per-position cosine) to frame a; a+3 keeps those least
similar to the *unpruned* frame a+2. As in the reference code, "merging" is pruning: nothing is averaged.

faithful vs fixed (reference: KD-TAO/DyCoke ``llava/model/llava_arch.py`` ``dycole_ttm`` at ``dd74634``,
after the pass-A fix ``35cc532``):

- Loop bounds. ``faithful`` runs the reference's pairs ``range(0, F-1, 2)`` then skip-pairs
  ``range(0, F-4, 4)``, so the last window's third frame is never pruned (F=32, T=196, K=0.7 gives exactly
  3,098 tokens), an odd F loses its last frame (logged as a warning), and F <= 4 is an error (the reference
  crashes there). ``fixed`` (default) applies the window rule to every complete or partial window and never
  drops a frame: F=32, T=196, K=0.7 gives 8*196 + 24*58 = 2,960 tokens.
- Order and positions. The reference keeps a pruned frame's tokens in ``topk(largest=False)`` order
  (ascending similarity, most dissimilar first) and renumbers the shortened sequence contiguously, so that
  order decides each token's sequence slot and rotary position. ``faithful`` emits exactly that order
  (a :class:`~vidpress.tokens.PackedTokens` block, numbered contiguously); ``fixed`` keeps spatial order and
  each token's original position (the text after the video keeps its uncompressed positions).
- Similarity. ``faithful`` computes it as the reference does, in the features' dtype (``cosine_similarity``
  of L2-normalised tokens for the pairs, of raw tokens for the skip-pairs); ``fixed`` in float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..._checks import check_mode, check_ratio
from ...errors import InvalidParameterError
from ...selection import Selection
from ...stages import Needs, PreLLMStage
from ...tokens import PackedTokens, StageContext, VisualTokens

log = logging.getLogger(__name__)


def ttm_references(num_frames: int, mode: str) -> tuple[dict[int, int], list[int]]:
    """The frame each pruned frame is compared against, and the frames emitted at all.

    Returns
    -------
    refs : dict[int, int]
        ``refs[j] = r``: frame j keeps its positions least similar to frame r. Frames not in ``refs`` but
        in ``emitted`` are kept whole.
    emitted : list[int]
        Frames that reach the output (faithful mode drops an odd F's last frame).
    """
    refs: dict[int, int] = {}
    if mode == "faithful":
        if num_frames <= 4:
            raise InvalidParameterError(
                f"faithful TTM needs at least 5 frames, got F={num_frames} (the reference code crashes for F <= 4); "
                "sample more frames or use mode='fixed'"
            )
        for j in range(0, num_frames - 1, 2):  # pass A: pairs
            refs[j + 1] = j
        for i in range(0, num_frames - 4, 4):  # pass B: skip-pairs, overwriting slot i+2
            refs[i + 2] = i
        emitted = list(range(2 * len(range(0, num_frames - 1, 2))))
        return refs, emitted
    for a in range(0, num_frames, 4):
        for offset, ref in ((1, a), (2, a), (3, a + 2)):
            if a + offset < num_frames:
                refs[a + offset] = ref
    return refs, list(range(num_frames))


@dataclass(frozen=True)
class TemporalMerge(PreLLMStage):
    """DyCoke TTM as a pre-LLM stage.

    Parameters
    ----------
    k : float
        DyCoke's K, the fraction of positions pruned in each non-anchor frame, in [0, 1]. Default 0.7.
        Each pruned frame keeps ``int((1 - k) * T)`` tokens; k=0 keeps everything.
    mode : {"fixed", "faithful"}
        See the module docstring. Default "fixed".

    Shapes
    ------
    Input ``tokens.features`` is (B, F, T, D). ``fixed`` returns a Selection over the flattened F*T axis;
    ``faithful`` a PackedTokens block (the kept tokens in the reference's order, then ``tokens.extra``) whose
    ``source`` holds those F*T indices in that order.

    Raises
    ------
    InvalidParameterError
        k outside [0, 1], an unknown mode, or F <= 4 in faithful mode.
    """

    k: float = 0.7
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def __post_init__(self) -> None:
        check_ratio("k", self.k, symbol="DyCoke K")
        check_mode(self.mode)

    @property
    def positions(self) -> Literal["original", "contiguous"]:
        """How the runtime numbers the shortened prompt: the reference renumbers contiguously after TTM."""
        return "contiguous" if self.mode == "faithful" else "original"

    def kept_per_pruned_frame(self, tokens_per_frame: int) -> int:
        return int((1 - self.k) * tokens_per_frame)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int:
        """Visual tokens TTM keeps: whole frames plus ``int((1 - K) * T)`` per pruned frame (3,098 for the
        reference at F=32, T=196, K=0.7). Raises InvalidParameterError where the stage would."""
        refs, emitted = ttm_references(frames, self.mode)
        pruned = sum(f in refs for f in emitted)
        return (len(emitted) - pruned) * tokens_per_frame + pruned * self.kept_per_pruned_frame(tokens_per_frame)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection | PackedTokens:
        x = tokens.features
        batch, frames, per_frame, _ = x.shape
        refs, emitted = ttm_references(frames, self.mode)
        if len(emitted) < frames:
            log.warning("faithful TTM drops the last of %d frames (odd F), as the reference code does", frames)
        keep = self.kept_per_pruned_frame(per_frame)
        kept = {}  # frame -> (B, kept positions) in the order the frame emits them
        pruned = sorted(j for j in refs if j in set(emitted))
        if pruned:
            target = torch.tensor(pruned, device=x.device)
            source = torch.tensor([refs[j] for j in pruned], device=x.device)
            low = self.similarity(x, target, source).topk(keep, dim=-1, largest=False).indices  # (B, P, keep)
            kept = {j: low[:, i] for i, j in enumerate(pruned)}
        whole = torch.arange(per_frame, device=x.device).expand(batch, per_frame)
        order = torch.cat([kept.get(f, whole) + f * per_frame for f in emitted], dim=1)  # (B, K)
        if self.mode == "fixed":
            return Selection.from_indices(order, frames * per_frame)
        flat = x.flatten(1, 2)
        rows = [(flat[b, order[b]], order[b] // per_frame, torch.zeros_like(order[b]), order[b]) for b in range(batch)]
        return PackedTokens.from_rows(rows, 1, frames * per_frame, tokens.extra)

    def similarity(self, x: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Per-position cosine of frames ``target`` against frames ``source`` (no cross-position matching),
        (B, P, T). Faithful follows the reference's arithmetic: features' dtype, pairs (j = r + 1) on L2-normalised
        tokens, skip-pairs on raw tokens."""
        if self.mode == "fixed":
            a = torch.nn.functional.normalize(x[:, target].float(), dim=-1)
            b = torch.nn.functional.normalize(x[:, source].float(), dim=-1)
            return (a * b).sum(-1)
        a, b = x[:, target], x[:, source]
        pair = (target - source == 1).view(1, -1, 1, 1)
        a = torch.where(pair, torch.nn.functional.normalize(a, dim=-1), a)
        b = torch.where(pair, torch.nn.functional.normalize(b, dim=-1), b)
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)
