"""Requests per second and latency of ``cln-textgen serve``: one client, N
clients at once (the server batches their rows into shared decode steps), and
``cln-textgen generate`` calls.

Starts ``cln-textgen serve`` on a free loopback port; one client thread, then
N, send the same kind of request for a bounded time each (request ``k`` of a
phase draws seed ``k``, so both phases ask for the same texts and the script
checks that each seed got the same text alone and beside others); then makes
N sequential ``cln-textgen generate`` calls with the same options (each pays
the start-up a server pays once).  Before each phase, a warm-up round of that
phase's requests compiles the batch shapes it meets::

    python scripts/bench_serve.py --run runs/demo --clients 8 --seconds 30

Only loopback is used; every loop is bounded in count and time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a trained run folder (default runs/demo)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, and CLI calls")
    p.add_argument("--seconds", type=float, default=30, help="how long the clients send")
    p.add_argument("--max-requests", type=int, default=2000, help="stop after this many in all")
    p.add_argument("-n", type=int, default=1, help="texts per label and request")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--label", default="positive")
    return p.parse_args(argv)


def start_server(run):
    process = subprocess.Popen(
        [sys.executable, "-m", "cln_textgen", "serve", "--run", run, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if " on http" not in line:
        process.kill()
        sys.exit(f"the server did not start: {line}{process.stderr.read()}")
    return process, line.split(" on ")[1].strip().rstrip("/")


def percentile(values, q):
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def bench_server(url, body, clients, seconds, max_requests):
    """``(requests/s, latencies, {seed: texts})`` of ``clients`` threads sending
    ``body`` with seeds 0, 1, 2, ... for ``seconds``."""
    import httpx

    def send(http, seed):
        answer = http.post(url + "/v1/generate", json={**body, "seed": seed})
        return answer.status_code, answer.text

    # Warm-up: one round of this phase's requests at once.
    with httpx.Client(timeout=600) as http:
        warm = [threading.Thread(target=send, args=(http, 10**6 + i)) for i in range(clients)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
    latencies, texts, lock, errors = [], {}, threading.Lock(), []
    deadline = time.perf_counter() + seconds
    seeds = iter(range(max_requests))

    def client():
        with httpx.Client(timeout=600) as http:
            while time.perf_counter() < deadline:
                with lock:
                    seed = next(seeds, None)
                if seed is None:
                    return
                started = time.perf_counter()
                status, text = send(http, seed)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if status != 200:
                        errors.append(text)
                    else:
                        texts[seed] = [t["text"] for t in json.loads(text)["texts"]]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return len(latencies) / elapsed, latencies, texts


def bench_cli(run, body, calls):
    latencies = []
    for seed in range(calls):
        command = [sys.executable, "-m", "cln_textgen", "generate", "--run", run,
                   "--label", body["label"], "-n", str(body["n"]),
                   "--max-new-tokens", str(body["max_new_tokens"]), "--seed", str(seed),
                   "--format", "jsonl"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        latencies.append(time.perf_counter() - started)
    return calls / sum(latencies), latencies


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.run, "config.yaml").is_file():
        sys.exit(f"{args.run}: not a run folder; train one first (make demo) or pass --run")
    body = {"label": args.label, "n": args.n, "max_new_tokens": args.max_new_tokens}
    process, url = start_server(args.run)
    try:
        phases = {clients: bench_server(url, body, clients, args.seconds, args.max_requests)
                  for clients in (1, args.clients)}
    finally:
        process.terminate()
        process.wait(timeout=30)
    cli_rate, cli_lat, _ = (*bench_cli(args.run, body, args.clients), None)
    alone, together = phases[1][2], phases[args.clients][2]
    common = sorted(set(alone) & set(together))
    same = sum(alone[seed] == together[seed] for seed in common)
    print(f"request: {json.dumps(body)}; {args.seconds:.0f} s per phase; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end")
    print(f"{'':<28}{'requests':>9}{'req/s':>9}{'p50 s':>9}{'p95 s':>9}")
    rows = [(f"server, {clients} client{'s' * (clients > 1)}", rate, lat)
            for clients, (rate, lat, _) in phases.items()]
    rows.append((f"CLI ({args.clients} calls, one process each)", cli_rate, cli_lat))
    for name, rate, lat in rows:
        print(f"{name:<28}{len(lat):>9}{rate:>9.2f}{percentile(lat, 50):>9.2f}"
              f"{percentile(lat, 95):>9.2f}")
    print(f"{args.clients} clients / 1 client: {phases[args.clients][0] / phases[1][0]:.2f}x "
          f"the requests per second; server (1 client) / CLI: {phases[1][0] / cli_rate:.1f}x")
    print(f"same texts as alone: {same} of the {len(common)} seeds both phases asked for")


if __name__ == "__main__":
    main()
