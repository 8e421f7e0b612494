"""Heatmaps of subspace-similarity grids (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_similarity_heatmaps(grids: dict[str, torch.Tensor], path: str | Path, title: str) -> Path:
    """One panel per grid (``name -> phi grid [i, j]``), colour scale fixed to [0, 1] so panels
    and files compare at a glance; rows are i (this adapter), columns j (the other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted(grids, key=lambda n: (n != "all", n))  # the overall mean first
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.2, 2.8 * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    image = None
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        grid = grids[name].float().numpy()
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                          extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("j (other)", fontsize=8)
        ax.set_ylabel("i (this)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=axes.ravel().tolist(), label="phi(i, j)")
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
