"""Loss curves of a run, drawn from its metrics.jsonl."""

import json


def read_metrics(path):
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


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
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
