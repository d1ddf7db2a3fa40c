"""Kill and damage a tiny training run at random, many times, and check that
no run is lost.

Each round trains a tiny run (a random 2-layer BERT, 160 review lines, 30
steps) and hits it with random faults until it finishes: kill -9, SIGTERM or
Ctrl-C at a random moment (during start-up too), a second trainer started on
the same folder, and, between two attempts, damage to the folder (newest
checkpoint truncated, bit-flipped, its index cut or deleted, the checkpoint
pointer overwritten with garbage, metrics.jsonl cut inside a character, a
leftover temporary folder).  A round survives when its run ends with the very
checkpoint an undisturbed run makes (every tensor equal) and a clean log.

    python scripts/fault_injection.py            # 2 rounds: a few minutes on 2 idle cores
    python scripts/fault_injection.py --rounds 20 --seed 7
"""

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
SETTINGS = ["--no-progress", "--set", "train.epochs=3", "--set", "train.save_every_steps=2",
            "--set", "train.samples_per_label=0"]
KILLS = ("SIGKILL", "SIGTERM", "SIGINT", "second trainer")
DAMAGE = ("truncate data", "flip bits", "cut index", "delete index", "garbage pointer",
          "cut metrics", "temp folder")


def train(config, run, wait=True):
    args = [sys.executable, "-m", "cln_textgen", "train", "--config", str(config),
            "--set", f"run_dir={run}", *SETTINGS]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if wait:
        process.communicate()
    return process


def tensors(prefix):
    from cln_textgen.backend import tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("save_counter")}


def newest(run):
    found = sorted((run / "checkpoints").glob("ckpt-*.index"),
                   key=lambda p: int(p.name[5:-6]))
    return [p.with_suffix("") for p in found]


def damage(run, how, rng):
    prefixes = newest(run)
    prefix = prefixes[-1]
    data = Path(f"{prefix}.data-00000-of-00001")
    index = Path(f"{prefix}.index")
    if how == "truncate data":
        data.write_bytes(data.read_bytes()[:rng.randrange(max(data.stat().st_size, 1))])
    elif how == "flip bits":
        raw = bytearray(data.read_bytes())
        for _ in range(8):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        data.write_bytes(bytes(raw))
    elif how == "cut index":
        index.write_bytes(index.read_bytes()[:rng.randrange(max(index.stat().st_size, 1))])
    elif how == "delete index":
        index.unlink()
    elif how == "garbage pointer":
        (run / "checkpoints" / "checkpoint").write_bytes(rng.randbytes(rng.randrange(0, 64)))
    elif how == "cut metrics":
        metrics = run / "metrics.jsonl"
        line = json.dumps({"event": "note", "step": 10**6, "text": "中文"}, ensure_ascii=False)
        metrics.write_bytes(metrics.read_bytes() + line.encode()[:-4])
    elif how == "temp folder":
        (run / "checkpoints" / f"ckpt-{10**6}_temp").mkdir(exist_ok=True)


def one_round(config, run, reference, steps, rng, log):
    """Faults until the run finishes; returns (faults, survived, problem or None)."""
    faults = 0
    for attempt in range(12):
        fault = rng.choice(KILLS) if attempt < 4 else None  # then let it finish
        if fault and len(newest(run)) >= 2 and rng.random() < 0.5:
            fault = rng.choice(DAMAGE)
        if fault in DAMAGE:
            damage(run, fault, rng)
            log(f"  damage: {fault}")
            faults += 1
            fault = None
        process = train(config, run, wait=False)
        if fault:
            if rng.random() < 0.5:  # during training (after a first checkpoint) ...
                pointer = run / "checkpoints" / "checkpoint"
                while not pointer.exists() and process.poll() is None:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 3.0))
            else:  # ... or at any moment, start-up included
                time.sleep(rng.uniform(0.5, 14.0))
            faults += 1
            log(f"  {fault} at attempt {attempt + 1}")
            if fault == "second trainer":
                second = train(config, run, wait=False)
                (_, second_err), (out, err) = second.communicate(), process.communicate()
                codes = sorted((second.returncode, process.returncode))
                # one of them holds the lock, the other must stop at once (both may
                # finish when the first ended before the second started)
                if codes not in ([0, 2], [0, 0]) or "Traceback" in second_err + err:
                    return faults, False, f"two trainers exited {codes}: {second_err[-300:]}"
                if "in use by PID" not in second_err + err and codes == [0, 2]:
                    return faults, False, "the refused trainer did not name the holder"
                continue
            process.send_signal(getattr(signal, fault))
        out, err = process.communicate()
        if "Traceback" in err:
            return faults, False, f"traceback: {err.strip().splitlines()[-1]}"
        if process.returncode == 0 and ("done:" in out or "this run is complete" in out):
            break
        if process.returncode not in (0, 1, 130, 143, -9):
            return faults, False, f"exit {process.returncode}: {err.strip()[-300:]}"
    else:
        return faults, False, "did not finish"
    final = run / "checkpoints" / f"ckpt-{steps}"
    same = tensors(final)
    if same.keys() != reference.keys() or not all(np.array_equal(same[k], reference[k])
                                                   for k in same):
        return faults, False, "the final checkpoint differs from the undisturbed run's"
    logged = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines()) if e["event"] == "train"]
    if logged != list(range(1, steps + 1)):
        return faults, False, "metrics.jsonl does not hold each step once"
    return faults, True, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs to torment (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults (default: random)")
    parser.add_argument("--work", help="folder for the runs (default: a temporary folder)")
    args = parser.parse_args()
    from conftest import write_tiny_task

    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="fault-injection-"))
    config = write_tiny_task(work / "task")
    started = time.time()
    reference_run = work / "reference"
    done = train(config, reference_run)
    if done.returncode != 0:
        sys.exit(f"the undisturbed run failed: {done.stderr.strip()[-500:]}")
    steps = max(int(p.name[5:]) for p in newest(reference_run))
    reference = tensors(reference_run / "checkpoints" / f"ckpt-{steps}")
    print(f"seed {seed}; undisturbed run: {steps} steps; folder {work}", flush=True)
    faults = survived = lost = 0
    for number in range(1, args.rounds + 1):
        n, ok, problem = one_round(config, work / f"run-{number}", reference, steps, rng,
                                   lambda text: print(text, flush=True))
        faults += n
        survived += n if ok else 0
        lost += 0 if ok else 1
        print(f"round {number}: {n} faults, " + ("survived" if ok else f"LOST: {problem}"),
              flush=True)
    print(f"{faults} faults, {survived} survived, {lost} runs lost "
          f"({args.rounds} rounds in {(time.time() - started) / 60:.1f} min)")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
