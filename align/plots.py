"""PNG plots for align's reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(h["step"], h[key]) for h in history if key in h and h.get("step") is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(history: list[dict], keys: dict[str, str], path: Path, title: str, ylabel: str) -> Path | None:
    """One line per log key (label -> key) against step; None when nothing was logged."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = 0
    for label, key in keys.items():
        xs, ys = _series(history, key)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, float], path: Path, title: str, ylabel: str) -> Path | None:
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(values), list(values.values()), color="#4c72b0")
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
