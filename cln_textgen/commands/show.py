"""``cln-textgen show``: what one run is, from its folder."""

from pathlib import Path


def register(sub):
    p = sub.add_parser("show", help="show a run: config, labels, checkpoints, how to resume",
                       description="Print a run's merged config, its labels, its checkpoints "
                                   "(step, valid loss, size), its data fingerprint when the "
                                   "run has one, and the command that resumes it.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.set_defaults(func=run)


def run(args):
    from cln_textgen.runs.fingerprint import read_data_fingerprint
    from cln_textgen.runs.folder import open_run
    from cln_textgen.runs.inspect import checkpoints, read_events, summary
    from cln_textgen.runs.status import writer

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
    holder = writer(run_dir.path)
    if holder:
        print(f"in use by: {holder}")
    data = read_data_fingerprint(run_dir.path)  # runs made before data.json have none
    if data:
        print("data:")
        for split, f in data.items():
            counts = ", ".join(f"{label} {n}" for label, n in f["labels"].items())
            print(f"  {split:5}  {f['path']}  {f['size']} bytes  sha256 {f['sha256'][:16]}…  "
                  f"{f['texts']} texts -> {f['examples']} examples ({counts})")
    resume = f"cln-textgen train --config {run_dir.config}"
    if Path(run_dir.read_config().run_dir).resolve() != run_dir.path.resolve():
        resume += f" --set run_dir={run_dir.path}"  # the folder was moved since
    print(f"resume: {resume}")
    print(f"config ({run_dir.config}):")
    print(run_dir.config.read_text(encoding="utf-8").rstrip())
    return 0
