"""Figures of the metrics, written by training (validation) and evaluation (test) alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alzprog.constants import STAGES


def confusion_matrix_png(cmat: list[list[int]], path: Path, title: str) -> Path:
    """The 4 x 4 stage confusion matrix (rows true, columns predicted) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cmat)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(STAGES)), [s.replace(" ", "\n") for s in STAGES], fontsize=8)
    ax.set_yticks(range(len(STAGES)), STAGES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center",
                    color="white" if arr[i, j] > arr.max() / 2 else "black", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
