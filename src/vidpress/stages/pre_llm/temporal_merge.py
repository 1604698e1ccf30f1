"""DyCoke stage 1, temporal token merging (TTM) — Tao et al., CVPR 2025, §3.2; methods.md §1.2.

Frames are taken in windows of four (a, a+1, a+2, a+3). Frame a is kept whole; a+1 and a+2 keep the
``keep = int((1 - K) * T)`` positions least similar (per-position cosine) to frame a; a+3 keeps those least
similar to the *unpruned* frame a+2. As in the reference code, "merging" is pruning: nothing is averaged.

faithful vs fixed:

- ``faithful`` reproduces the official loop bounds (commit 35cc532): pairs ``range(0, F-1, 2)`` then
  skip-pairs ``range(0, F-4, 4)``, so the last window's third frame is never pruned (F=32, T=196, K=0.7
  gives exactly 3,098 tokens), an odd F loses its last frame (logged as a warning), and F <= 4 is an error
  (the reference crashes there).
- ``faithful`` also renumbers positions contiguously after TTM, as the reference does; ``fixed`` keeps each
  token's original rotary position (and the text after the video keeps the uncompressed positions).
- ``fixed`` (default) applies the window rule uniformly to every complete or partial window and never
  drops a frame: F=32, T=196, K=0.7 gives 8*196 + 24*58 = 2,960 tokens.

Both modes return kept tokens in ascending (frame, position) order; the reference leaves the order inside a
pruned frame to ``topk(sorted=False)``, which is implementation-defined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..._checks import check_mode, check_ratio
from ...errors import InvalidParameterError
from ...selection import Selection
from ...stages import Needs
from ...tokens import StageContext, VisualTokens

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
class TemporalMerge:
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
    Input ``tokens.features`` is (B, F, T, D); the returned Selection indexes the flattened F*T axis.

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
    def positions(self) -> str:
        """How the runtime numbers the shortened prompt: the reference renumbers contiguously after TTM."""
        return "contiguous" if self.mode == "faithful" else "original"

    def kept_per_pruned_frame(self, tokens_per_frame: int) -> int:
        return int((1 - self.k) * tokens_per_frame)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection:
        x = tokens.features
        batch, frames, per_frame, _ = x.shape
        refs, emitted = ttm_references(frames, self.mode)
        if len(emitted) < frames:
            log.warning("faithful TTM drops the last of %d frames (odd F), as the reference code does", frames)
        keep = self.kept_per_pruned_frame(per_frame)
        pruned = sorted(j for j in refs if j in set(emitted))
        pieces = [torch.arange(per_frame, device=x.device).expand(batch, per_frame) + f * per_frame
                  for f in emitted if f not in refs]
        if pruned:
            target = torch.tensor(pruned, device=x.device)
            source = torch.tensor([refs[j] for j in pruned], device=x.device)
            a = torch.nn.functional.normalize(x[:, target].float(), dim=-1)
            b = torch.nn.functional.normalize(x[:, source].float(), dim=-1)
            similarity = (a * b).sum(-1)  # (B, P, T): per-position cosine, no cross-position matching
            low = similarity.topk(keep, dim=-1, largest=False).indices  # least redundant positions
            pieces.append((low + target.view(1, -1, 1) * per_frame).flatten(1))
        return Selection.from_indices(torch.cat(pieces, dim=1), frames * per_frame)
