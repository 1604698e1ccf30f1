"""`Selection`: a keep plan over a token axis, made a value (ToMe's plan/apply idea).

A stage decides which tokens survive and returns a :class:`Selection`; the runtime applies the same plan
to features, positions, masks and provenance. Stages never touch the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import BudgetError


@dataclass(frozen=True)
class Selection:
    """Which tokens of an axis of length ``n`` survive, per batch row.

    Attributes
    ----------
    keep : LongTensor, shape (B, K)
        Indices into the input axis, sorted ascending and unique within each row. Every row keeps the
        same number K of tokens (ragged plans are not supported yet).
    n : int
        Length of the input axis the indices refer to.
    """

    keep: Tensor
    n: int

    def __post_init__(self) -> None:
        if self.keep.dim() != 2:
            raise ValueError(f"Selection.keep must be (B, K), got shape {tuple(self.keep.shape)}")

    @property
    def num_kept(self) -> int:
        """K, the number of surviving tokens per row."""
        return self.keep.shape[1]

    @property
    def batch_size(self) -> int:
        return self.keep.shape[0]

    @staticmethod
    def identity(batch_size: int, n: int, device: torch.device | str | None = None) -> Selection:
        """Keep everything: ``keep = arange(n)`` for each of ``batch_size`` rows."""
        keep = torch.arange(n, device=device).expand(batch_size, n).contiguous()
        return Selection(keep, n)

    @staticmethod
    def from_indices(keep: Tensor, n: int) -> Selection:
        """Build from unsorted (B, K) or (K,) indices: sorts each row and checks range and uniqueness."""
        if keep.dim() == 1:
            keep = keep[None]
        keep = keep.sort(dim=-1).values
        if keep.numel() and (keep.min() < 0 or keep.max() >= n):
            raise IndexError(f"selection indices must lie in [0, {n}), got [{keep.min()}, {keep.max()}]")
        if keep.shape[1] > 1 and (keep[:, 1:] == keep[:, :-1]).any():
            raise ValueError("selection indices must be unique within each row")
        return Selection(keep.long(), n)

    @staticmethod
    def top_k(scores: Tensor, k: int, *, largest: bool = True) -> Selection:
        """Keep the ``k`` highest- (or lowest-) scoring tokens of each row.

        Parameters
        ----------
        scores : Tensor, shape (B, N)
        k : int
            0 <= k <= N; a larger k raises :class:`BudgetError`.
        """
        n = scores.shape[-1]
        if not 0 <= k <= n:
            raise BudgetError(f"cannot keep k={k} of {n} tokens; choose 0 <= k <= {n}")
        idx = scores.float().topk(k, dim=-1, largest=largest, sorted=False).indices
        return Selection.from_indices(idx, n)

    def apply(self, x: Tensor, dim: int = 1) -> Tensor:
        """Gather the kept tokens of ``x`` along ``dim`` (the batch axis is 0).

        ``x`` has shape (B, ..., n, ...) with the token axis at ``dim``; the result has K there.
        """
        dim = dim % x.dim()
        shape = [1] * x.dim()
        shape[0], shape[dim] = self.keep.shape
        index = (
            self.keep.to(x.device)
            .view(shape)
            .expand(*[s if i != dim else self.num_kept for i, s in enumerate(x.shape)])
        )
        return x.gather(dim, index)

    def then(self, later: Selection) -> Selection:
        """Compose: ``later`` indexes this selection's output; the result indexes the original axis."""
        if later.n != self.num_kept:
            raise ValueError(f"cannot compose: later selection expects n={later.n}, this one keeps {self.num_kept}")
        return Selection(self.keep.gather(1, later.keep.to(self.keep.device)), self.n)

    def mask(self) -> Tensor:
        """Boolean keep mask, shape (B, n)."""
        m = torch.zeros(self.batch_size, self.n, dtype=torch.bool, device=self.keep.device)
        return m.scatter_(1, self.keep, True)


@dataclass(frozen=True)
class MergedSelection(Selection):
    """A prefill plan that also merges: the kept tokens' hidden states are replaced by ``features`` before the
    others are dropped (HoliTom's inner-LLM merging).

    Attributes
    ----------
    features : Tensor, shape (B, K, D)
        The new hidden states of the kept tokens, in ``keep`` order.
    weights : Tensor, shape (B, K, n)
        Each kept token's weight on each of the n input tokens (float32): what it merged.
    """

    features: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features.shape[:2] != self.keep.shape:
            raise ValueError("MergedSelection.features must be (B, K, D) for the kept tokens")
