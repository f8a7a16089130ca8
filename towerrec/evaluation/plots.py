"""PNG plots of evaluation results: Recall@K curves (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from towerrec.config import ConfigError


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


def plot_recall_qps(points: Sequence[tuple], exact_qps: float, path: Path,
                    title: str = "") -> Path:
    """An index's recall@10 against queries per second: `points` are (leaves searched,
    recall, QPS) of its settings; exact search is the point (recall 1, `exact_qps`)."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    points = sorted(points, key=lambda p: p[2])
    axes.plot([p[2] for p in points], [p[1] for p in points], "o-", label="ScaNN")
    for leaves, recall, qps in points:
        axes.annotate(str(leaves), (qps, recall), textcoords="offset points", xytext=(4, -10),
                      fontsize=7)
    axes.plot([exact_qps], [1.0], "s", color="black", label="exact (brute force)")
    axes.set_xscale("log")
    axes.set_xlabel("queries per second (1 thread, log scale)")
    axes.set_ylabel("recall@10 against exact")
    axes.grid(alpha=0.3, which="both")
    axes.set_title(title)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
