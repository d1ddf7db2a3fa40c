"""What a run folder holds, read without TensorFlow: for ``runs`` and ``show``.

Everything is derived from the files a run writes (``metrics.jsonl``, the
checkpoint folders, ``config.yaml``, ``labels.json``) and from its writer's
lock: ``running`` means a process holds it.  Complete is the trainer's own
rule (runs/status.py), fed with the counters the log holds.
"""

import json
import math
import re
import time
from pathlib import Path

from cln_textgen.runs.folder import PretrainDir, RunDir
from cln_textgen.runs.status import bad_evals, completion, writer


def find_runs(root, depth=3):
    """Run folders at or under ``root`` (``depth`` levels at most), sorted by path."""
    root = Path(root)
    found = []
    for level in range(depth + 1):
        for config in root.glob("/".join(["*"] * level + ["config.yaml"])):
            run = RunDir(config.parent)
            if not run.is_initialised():
                run = PretrainDir(config.parent)  # a pretraining run has no labels
            if run.is_initialised():
                found.append(run)
    return sorted(found, key=lambda run: str(run.path))


def read_events(run):
    """The events of ``metrics.jsonl``; a line cut short by a kill is skipped."""
    if not run.metrics.is_file():
        return []
    events = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def checkpoints(directory):
    """``[(step, prefix, bytes)]`` of the checkpoints saved in ``directory``."""
    out = []
    for index in sorted(Path(directory).glob("ckpt-*.index")):
        prefix = index.with_suffix("")
        match = re.fullmatch(r"ckpt-(\d+)", prefix.name)
        if match:
            size = sum(p.stat().st_size for p in prefix.parent.glob(prefix.name + ".*"))
            out.append((int(match.group(1)), prefix, size))
    return sorted(out)


def summary(run):
    """One row of ``cln-textgen runs``: a dict of step, epoch, status, best
    valid perplexity, labels and last change."""
    config = run.read_config()
    events = read_events(run)
    saved = checkpoints(run.checkpoints)
    step = saved[-1][0] if saved else 0
    at_step = [e for e in events if e.get("step", 0) <= step]
    epoch = at_step[-1].get("epoch", 0) if at_step else 0
    evals = [e for e in at_step if e.get("event") == "eval" and e.get("valid_ppl") is not None]
    best = min((e["valid_ppl"] for e in evals), default=None)
    t = config.train
    touched = [p.stat().st_mtime for p in (run.metrics, run.checkpoints / "checkpoint")
               if p.is_file()]
    changed = max(touched, default=run.config.stat().st_mtime)
    losses = [e.get("loss") for e in events if e.get("event") == "train"]
    if any(isinstance(x, float) and not math.isfinite(x) for x in losses):
        status = "diverged"
    elif writer(run.path):
        status = "running"
    elif completion(t, step, epoch, bad_evals([e.get("valid_loss", e["valid_ppl"]) for e in evals]),
                    has_valid=run.has_valid(config)):
        status = "complete"
    else:
        status = "stopped"
    return {"run": str(run.path), "step": step, "epoch": epoch, "epochs": t.epochs,
            "status": status, "best_valid_ppl": best, "labels": run.read_labels(),
            "changed": time.strftime("%Y-%m-%d %H:%M", time.localtime(changed))}
