"""Requests per second and latency of ``cln-textgen serve`` against CLI calls.

Starts ``cln-textgen serve`` on a free loopback port, lets N client threads
send the same kind of request for a bounded time, then makes N sequential
``cln-textgen generate`` calls with the same options (each pays the start-up
a server pays once), and prints both side by side::

    python scripts/bench_serve.py --run runs/demo --clients 4 --seconds 30

Only loopback is used; every loop is bounded in count and time.
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a trained run folder (default runs/demo)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients, and CLI calls")
    p.add_argument("--seconds", type=float, default=30, help="how long the clients send")
    p.add_argument("--max-requests", type=int, default=2000, help="stop after this many in all")
    p.add_argument("-n", type=int, default=2, help="texts per request")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--label", default="all")
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
    import httpx

    httpx.post(url + "/v1/generate", json=body, timeout=300).raise_for_status()  # compile once
    latencies, lock, errors = [], threading.Lock(), []
    deadline = time.perf_counter() + seconds

    def client(index):
        with httpx.Client(timeout=300) as http:
            seed = index * 100_000
            while time.perf_counter() < deadline:
                with lock:
                    if len(latencies) >= max_requests:
                        return
                seed += 1
                started = time.perf_counter()
                answer = http.post(url + "/v1/generate", json={**body, "seed": seed})
                with lock:
                    if answer.status_code != 200:
                        errors.append(answer.text)
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return len(latencies) / elapsed, latencies


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
        server_rate, server_lat = bench_server(url, body, args.clients, args.seconds,
                                               args.max_requests)
    finally:
        process.terminate()
        process.wait(timeout=30)
    cli_rate, cli_lat = bench_cli(args.run, body, args.clients)
    print(f"request: {json.dumps(body)}; {args.clients} concurrent clients for "
          f"{args.seconds:.0f} s against {args.clients} sequential CLI calls")
    print(f"{'':<28}{'requests':>9}{'req/s':>9}{'p50 s':>9}{'p95 s':>9}")
    for name, rate, lat in (("server", server_rate, server_lat), ("CLI (one process each)",
                                                                 cli_rate, cli_lat)):
        print(f"{name:<28}{len(lat):>9}{rate:>9.2f}{percentile(lat, 50):>9.2f}"
              f"{percentile(lat, 95):>9.2f}")
    print(f"server / CLI: {server_rate / cli_rate:.1f}x the requests per second, "
          f"p50 latency {percentile(cli_lat, 50) / percentile(server_lat, 50):.1f}x lower")


if __name__ == "__main__":
    main()
