"""Plots of a run: reward, accuracy, completion length and entropy against step, as PNG files in plots/."""

from __future__ import annotations

from pathlib import Path

from reinforced.tracking.sinks import read_metrics

# (file name, title, metric keys drawn on it)
PLOTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reward.png", "reward", ("reward/mean",)),
    ("accuracy.png", "accuracy", ("accuracy/mean",)),
    ("completion_length.png", "completion length (tokens)", ("rollout/completion_len",)),
    ("entropy.png", "policy entropy (nats/token)", ("train/entropy",)),
)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per entry of PLOTS (held-out accuracy is drawn on the accuracy plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/accuracy")})
    written = []
    for file_name, title, keys in PLOTS:
        keys = keys + tuple(eval_keys) if file_name == "accuracy.png" else keys
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / file_name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
