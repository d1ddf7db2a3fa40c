"""``cln-textgen runs``: a table of the runs under a folder."""

from cln_textgen.errors import UserError


def register(sub):
    p = sub.add_parser("runs", help="list the runs under a folder: step, status, best perplexity",
                       description="A table of the run folders at or under DIR: step of the "
                                   "latest checkpoint, epochs done, status (running: the log changed "
                                   "in the last 10 minutes), best valid perplexity, labels and "
                                   "last change.")
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                   help="folder to look in (default: runs)")
    p.set_defaults(func=run)


def run(args):
    from pathlib import Path

    from cln_textgen.runs.inspect import find_runs, summary

    if not Path(args.dir).is_dir():
        raise UserError(f"{args.dir}: folder not found; pass the folder your runs are in")
    rows = [summary(r) for r in find_runs(args.dir)]
    if not rows:
        print(f"no runs under {args.dir}")
        return 0
    header = ("run", "step", "epochs", "status", "best ppl", "labels", "last change")
    table = [header] + [(
        r["run"], str(r["step"]), f"{r['epoch']}/{r['epochs']}", r["status"],
        "-" if r["best_valid_ppl"] is None else f"{r['best_valid_ppl']:.2f}",
        ", ".join(r["labels"]), r["changed"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
