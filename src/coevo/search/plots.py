"""Plots of a search: fitness and terms per generation, kept channels per group (matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..core.files import atomic_save_figure
from ..prune import Genome

_TERMS = [("fitness", "best fitness (higher is better)"), ("perceptual", "perceptual distance"),
          ("cycle", "cycle L1"), ("macs", "GMACs (256x256, published)")]


def plot_history(history: List[Dict], best: Dict[str, Genome], out_dir: str | Path) -> List[Path]:
    """Write ``fitness.png`` and ``channels.png`` into ``out_dir``; returns their paths."""
    # The object API with the Agg canvas: no pyplot, so no global backend switch
    # in the caller's process (notebooks keep theirs).
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    directions = list(best)
    gens = [r["generation"] for r in history]

    fig = Figure(figsize=(4 * len(_TERMS), 3.4))
    axes = fig.subplots(1, len(_TERMS))
    for ax, (key, title) in zip(axes, _TERMS):
        scale = 1e-9 if key == "macs" else 1.0
        for d in directions:
            ax.plot(gens, [r[d]["best"][key] * scale for r in history], marker=".", label=f"{d} best")
            ax.plot(gens, [r[d]["mean"][key] * scale for r in history], linestyle="--", alpha=0.6,
                    label=f"{d} mean")
        ax.set_title(title)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fitness_png = out_dir / "fitness.png"
    atomic_save_figure(fig, fitness_png, dpi=100)

    fig = Figure(figsize=(6 * len(directions), 3.6))
    axes = fig.subplots(1, len(directions), squeeze=False)
    for ax, d in zip(axes[0], directions):
        genome = best[d]
        names = list(genome.arch.widths)
        full = [genome.arch.widths[n] for n in names]
        kept = [genome.widths()[n] for n in names]
        x = range(len(names))
        ax.bar(x, full, color="lightgray", label="teacher")
        ax.bar(x, kept, color="tab:blue", label="kept")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{d}: kept channels per group")
        ax.legend(fontsize=8)
    fig.tight_layout()
    channels_png = out_dir / "channels.png"
    atomic_save_figure(fig, channels_png, dpi=100)
    return [fitness_png, channels_png]
