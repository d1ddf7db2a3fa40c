"""Loss curves of a run, drawn from its metrics.jsonl."""

import io

from cln_textgen.runs.files import write_bytes_atomic
from cln_textgen.training.log import read_events


def read_metrics(path):
    return [event for _, event in read_events(path)]


def plot_losses(metrics_path, out_path, title=None):
    """Train loss per logged step and valid loss per evaluation, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(metrics_path)
    train = [(e["step"], e["loss"]) for e in events if e["event"] == "train"]
    valid = [(e["step"], e["valid_loss"]) for e in events if e["event"] == "eval"]
    if not train and not valid:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1, alpha=0.8)
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid loss", linewidth=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("next-token cross-entropy (nats)")
    ax.set_title(title or "training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(out_path, buffer.getvalue(), fsync=False)  # never a 0-byte loss.png
    return out_path


def try_plot_losses(metrics_path, out_path, title=None, warn=print):
    """:func:`plot_losses`, but a plot never fails a run: a problem is one warning line."""
    try:
        return plot_losses(metrics_path, out_path, title)
    except Exception as e:  # a plot is a convenience; the run is what matters
        warn(f"warning: could not draw {out_path} ({type(e).__name__}: {str(e)[:200]})")
        return None
