"""2-D pooling of frame grids for stages that re-pool the grid themselves (METok stage 1), and where a pooled
token sits among the model's own tokens."""

from __future__ import annotations

import math

import torch


def pool_grid(x: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """Pool (n, h0, w0, D) frame grids by ``stride``: bilinear to ceil(h0/s) (LLaVA-OV's own pooling at s=2),
    or average pooling to floor(h0/s) (the reference's "average" mode). Returns (n, T', D)."""
    grid = x.permute(0, 3, 1, 2)
    if mode == "bilinear":
        size = [math.ceil(grid.shape[2] / stride), math.ceil(grid.shape[3] / stride)]
        out = torch.nn.functional.interpolate(grid, size=size, mode="bilinear")
    else:
        out = torch.nn.functional.avg_pool2d(grid, stride) if stride > 1 else grid
    return out.permute(0, 2, 3, 1).flatten(1, 2)


def pool_weights(grid: tuple[int, int], stride: int, mode: str) -> torch.Tensor:
    """The weights :func:`pool_grid` gives each of a (h, w) grid's tokens in each pooled token: (T', h*w) float32
    (pooling is linear, so pooling the identity gives them)."""
    count = grid[0] * grid[1]
    return pool_grid(torch.eye(count).view(1, grid[0], grid[1], count), stride, mode)[0]


def window_sources(grid0: tuple[int, int], stride: int, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """For a (h0, w0) grid pooled by ``stride``: the index into the model's (h, w) token grid of the token nearest
    each window's centre, the position the pooled token takes. (T',) long."""
    rounding = math.ceil if mode == "bilinear" else math.floor
    rows = (
        ((torch.arange(rounding(grid0[0] / stride)) + 0.5) * stride * grid[0] / grid0[0]).long().clamp(max=grid[0] - 1)
    )
    cols = (
        ((torch.arange(rounding(grid0[1] / stride)) + 0.5) * stride * grid[1] / grid0[1]).long().clamp(max=grid[1] - 1)
    )
    return (rows[:, None] * grid[1] + cols[None, :]).flatten()


def cell_areas(grid0: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Each cell of a (h0, w0) grid's share in each cell of a (h, w) grid over the same frame, by area:
    (h0*w0, h*w) float32, rows summing to 1."""

    def overlap(n0: int, n: int) -> torch.Tensor:
        fine = torch.arange(n0 + 1) / n0
        coarse = torch.arange(n + 1) / n
        low = torch.maximum(fine[:-1, None], coarse[None, :-1])
        high = torch.minimum(fine[1:, None], coarse[None, 1:])
        return (high - low).clamp(min=0) * n0

    return torch.kron(overlap(grid0[0], grid[0]), overlap(grid0[1], grid[1])).float()
