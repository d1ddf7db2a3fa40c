"""``cln-textgen show``: what one run is, from its folder."""

import json
from pathlib import Path


def register(sub):
    p = sub.add_parser("show", help="show a run: config, labels, checkpoints, how to resume",
                       description="Print a run's merged config, its labels, its checkpoints "
                                   "(step, valid loss, size), its data fingerprint when the "
                                   "run has one, and the command that resumes it.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.runs.folder import open_run
    from cln_textgen.runs.inspect import checkpoints, read_events, summary

    run_dir = open_run(args.run)
    s = summary(run_dir)
    print(f"run: {run_dir.path} ({s['status']}; step {s['step']}, epochs done "
          f"{s['epoch']}/{s['epochs']}, last change {s['changed']})")
    print(f"labels: {', '.join(s['labels'])}")
    losses = {e["step"]: e["valid_loss"] for e in read_events(run_dir)
              if e.get("event") == "eval" and "valid_loss" in e}
    print("checkpoints:")
    for kind, folder in (("latest", run_dir.checkpoints), ("best", run_dir.best_checkpoints)):
        for step, prefix, size in checkpoints(folder):
            loss = f"valid loss {losses[step]:.4f}" if step in losses else "no valid loss"
            print(f"  {kind:6} step {step:>7}  {loss:18}  {size / 2**20:6.1f} MiB  {prefix}")
    # Written by newer runs only: shown when present.
    for name in ("fingerprint", "manifest", "lock"):
        path = getattr(run_dir, name, None)
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            try:
                text = json.dumps(json.loads(text), ensure_ascii=False)
            except ValueError:
                pass
            print(f"{name}: {text}")
    resume = f"cln-textgen train --config {run_dir.config}"
    if Path(run_dir.read_config().run_dir).resolve() != run_dir.path.resolve():
        resume += f" --set run_dir={run_dir.path}"  # the folder was moved since
    print(f"resume: {resume}")
    print(f"config ({run_dir.config}):")
    print(run_dir.config.read_text(encoding="utf-8").rstrip())
    return 0
