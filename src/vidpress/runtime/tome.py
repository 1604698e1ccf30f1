"""ToMe's merging inside a stock vision tower, through hooks (:mod:`vidpress.stages.vision.tome`).

Per encoder layer whose schedule merges ``r > 0`` tokens, on the layer's own forward:

- the keys projection's output, averaged over heads, is kept as the matching metric;
- the MLP branch's input norm receives the merged tokens ``M(x)`` (the matching made from the metric), so the
  MLP runs on ``t - r`` tokens; the branch's output is mapped back onto the ``t`` tokens (each takes its
  group's value) so the layer's own residual sum ``x + U(mlp)`` goes through;
- the layer's output is merged again: ``M(x + U(mlp)) = M(x) + mlp``, exactly ToMe's block;
- the next layers' attention gets ``log(size)`` added to its logits (proportional attention) as an additive mask.

Nothing is hung on the modules: the state of one tower call lives in a :class:`TowerMerge` the runtime holds
per thread, and every hook passes through when there is none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import torch
from torch import Tensor

from ..adapters.base import Adapter, TowerBlock
from ..errors import IncompatibleStagesError, VidpressError
from ..stages import Stages, TowerMerging
from ..stages.vision.tome import Matching, MergedBlock, bipartite_soft_matching, merge_weighted, unmerge


@dataclass
class TowerMerge:
    """The merging state of one tower call (n frames).

    Attributes
    ----------
    schedule : tuple[int, ...]
        Tokens merged at each encoder layer (layers past its length merge none).
    protected : bool
        The first token is a CLS token (never merged).
    proportional : bool
        Proportional attention.
    grid : bool
        Map every hidden state the tower returns back onto its input tokens (``TokenMerging.grid``).
    groups : list[LongTensor]
        Per hidden state (the embeddings, then each layer's output), (n, tokens in): which of that state's
        tokens each input token is in.
    done : list[int]
        Tokens each layer merged.
    """

    schedule: tuple[int, ...]
    protected: bool
    proportional: bool = True
    grid: bool = False
    groups: list[Tensor] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    size: Tensor | None = None
    metric: Tensor | None = None
    matching: Matching | None = None
    merged_size: Tensor | None = None

    def r(self, layer: int) -> int:
        return self.schedule[layer] if layer < len(self.schedule) else 0


def check_merging(adapter: Adapter, stages: Stages) -> None:
    """Refuse, before any encoding, a merging vision stage the model or the other stages cannot take.

    Raises
    ------
    IncompatibleStagesError
        A tower ToMe does not run on, several feature layers, ``grid`` beside :class:`MergedBlock`, no ``grid`` beside
        another pre-LLM stage or on a family that pools before its projector.
    BudgetError
        A schedule leaving more tokens per frame than the model's, or one its layers cannot reach.
    """
    vision = cast(TowerMerging, stages.vision)  # called for a stage that declares ``merges``
    adapter.tower_blocks()  # the tower's refusal first: it names what runs ToMe
    packs = isinstance(stages.pre_llm, MergedBlock)
    if vision.grid and packs:
        raise IncompatibleStagesError(
            "TokenMerging(grid=True) maps the merged tokens back onto the model's grid, so there is no merged "
            "block for MergedBlock to pack; drop MergedBlock or set grid=False"
        )
    if not vision.grid and not packs:
        raise IncompatibleStagesError(
            f"TokenMerging(grid=False) hands the LLM the tower's merged tokens, which have no (F, T) layout for "
            f"{type(stages.pre_llm).__name__}; pair it with MergedBlock (vidpress.ToMe does), or set "
            "grid=True to map them back onto the model's grid for any pre-LLM stage"
        )
    if not vision.grid and not adapter.encodes_at_any_resolution:
        raise IncompatibleStagesError(
            f"{type(adapter).__name__}'s model pools its features before the projector, so merged tokens "
            "cannot skip its pooling; use ToMe with grid=True there"
        )
    check_tower(adapter, vision)


def check_tower(adapter: Adapter, merge: Any) -> None:
    """Refuse a merging (``merge``, a TokenMerging) the model's tower cannot run: a tower ToMe does not run on, a
    schedule leaving more tokens per frame than the model's without ``grid``, or one its layers cannot reach
    (IncompatibleStagesError, BudgetError)."""
    adapter.tower_blocks()  # raises for towers ToMe does not run on
    side = adapter.patch_side()
    merge.tokens_left(side * side, adapter.feature_depth(), math.prod(adapter.grid()))


def register(blocks: list[TowerBlock], tower: Any, state: Callable[[], TowerMerge | None], add: Callable) -> None:
    """Register the merging hooks on ``blocks`` and ``tower``; ``add`` keeps each handle (the runtime removes
    them). ``state`` returns the calling thread's :class:`TowerMerge`, or None outside a merging tower call."""
    for index, block in enumerate(blocks):
        add(block.attention.register_forward_pre_hook(_proportional(state), with_kwargs=True))
        add(block.keys.register_forward_hook(_metric(state, index, block.heads)))
        add(block.mlp_in.register_forward_pre_hook(_merge_input(state, index)))
        add(block.mlp_out.register_forward_hook(_unmerge_branch(state)))
        add(block.layer.register_forward_hook(_merge_output(state), prepend=True))
    add(tower.register_forward_pre_hook(_start(state)))
    add(tower.register_forward_hook(_finish(state)))


def _start(state: Callable[[], TowerMerge | None]) -> Callable:
    def hook(module: Any, args: tuple) -> None:
        merge = state()
        if merge is not None:
            merge.groups, merge.done, merge.size, merge.metric, merge.matching = [], [], None, None, None

    return hook


def _proportional(state: Callable[[], TowerMerge | None]) -> Callable:
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        merge = state()
        if merge is None or merge.size is None or not merge.proportional:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        bias = merge.size.log()[:, None, None, :, 0].to(hidden.dtype)  # (n, 1, 1, t): added to every query row
        mask = kwargs.get("attention_mask")
        kwargs["attention_mask"] = bias if mask is None else mask + bias
        return args, kwargs

    return hook


def _metric(state: Callable[[], TowerMerge | None], layer: int, heads: int) -> Callable:
    def hook(module: Any, args: tuple, output: Tensor) -> None:
        merge = state()
        if merge is not None and merge.r(layer) > 0:
            merge.metric = output.view(*output.shape[:-1], heads, -1).mean(-2)

    return hook


def _merge_input(state: Callable[[], TowerMerge | None], layer: int) -> Callable:
    def hook(module: Any, args: tuple) -> tuple | None:
        merge = state()
        if merge is None:
            return None
        if not merge.groups:  # the embeddings: every token is its own group
            n, t = args[0].shape[:2]
            merge.groups.append(torch.arange(t, device=args[0].device).expand(n, t))
        merge.matching = None
        if merge.r(layer) > 0:
            if merge.metric is None:
                raise VidpressError(f"ToMe's keys for encoder layer {layer} were not captured before it merges")
            merge.matching = bipartite_soft_matching(merge.metric, merge.r(layer), merge.protected)
        if merge.matching is None:
            return None
        merged, merge.merged_size = merge_weighted(merge.matching, args[0], merge.size)
        return (merged, *args[1:])

    return hook


def _unmerge_branch(state: Callable[[], TowerMerge | None]) -> Callable:
    def hook(module: Any, args: tuple, output: Tensor) -> Tensor | None:
        merge = state()
        if merge is None or merge.matching is None:
            return None
        return merge.matching.unmerge(output)

    return hook


def _merge_output(state: Callable[[], TowerMerge | None]) -> Callable:
    def hook(module: Any, args: tuple, output: Any) -> Any:
        merge = state()
        if merge is None:
            return None
        matching, merge.matching = merge.matching, None
        merge.done.append(0 if matching is None else matching.r)
        if matching is None:
            merge.groups.append(merge.groups[-1])
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        merged = merge_weighted(matching, hidden, merge.size)[0]
        merge.size, merge.metric = merge.merged_size, None
        merge.groups.append(matching.groups().gather(1, merge.groups[-1]))
        return (merged, *output[1:]) if isinstance(output, tuple) else merged

    return hook


def _finish(state: Callable[[], TowerMerge | None]) -> Callable:
    def hook(module: Any, args: tuple, output: Any) -> Any:
        merge = state()
        if merge is None or not merge.grid:
            return None
        hidden = getattr(output, "hidden_states", None)
        if hidden is not None:
            output.hidden_states = tuple(
                h if h is None else unmerge(h, g) for h, g in zip(hidden, merge.groups[-len(hidden) :])
            )
        output.last_hidden_state = unmerge(output.last_hidden_state, merge.groups[-1])
        return output

    return hook
