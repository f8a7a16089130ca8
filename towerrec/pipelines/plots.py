"""PNG plots of evaluation results: Recall@K curves (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from towerrec.pipelines.config import ConfigError


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), or a one-line error."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_recall_curves(curves: Dict[str, Dict[str, Sequence[float]]], directory: Path,
                       title: str = "") -> List[Path]:
    """{split: {model: [Recall@1, ..., Recall@K]}} -> one PNG per split,
    directory/recall_at_k-<split>.png, a line per model. Returns the paths written."""
    plt = pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for split, models in curves.items():
        figure, axes = plt.subplots(figsize=(6, 4))
        for model, curve in models.items():
            axes.plot(range(1, len(curve) + 1), curve, label=model)
        axes.set_xlabel("K")
        axes.set_ylabel("Recall@K")
        axes.set_xlim(1, max(2, *(len(c) for c in models.values())))
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.set_title(f"{title} {split}".strip())
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = directory / f"recall_at_k-{split}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
