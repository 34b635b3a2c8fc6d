#!/usr/bin/env python3
"""CRT Lab's MLflow-compatible API against a real MLflow tracking server, same machine, same work.

Starts MLflow's own server (`mlflow server`, from PyPI, on a SQLite file) and CRT Lab (on a SQLite
file), then drives both with the same pre-serialized request bodies, timing each to the last byte:

  ingest   200,000 metric points by log-batch of 1,000 (10 keys x 20 steps... per body), 1 and 4 clients
  history  one key's 20,000-point history (MLflow: metrics/get-history, paged as its client does;
           CRT Lab: the same endpoint)
  compare  10 runs x 20,000 steps: one key of each run (MLflow: the sampled endpoint
           get-history-bulk-interval with 1,000 points per run; CRT Lab: /api/v1 metrics with
           points=1000), and CRT Lab's compare-page data for the 10 runs (every key, points=2000)
           and one run page's data (every key, points=3000)

Not part of CI (it needs the full `mlflow` package): run it through scripts/bench_mlflow.sh, which makes its venv.
Usage: bench_mlflow.py --crt-server target/release/crt-server [--mlflow BIN] [--only crt]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

KEYS = [f"m{i}" for i in range(10)]
STEPS = 20_000
BATCH = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base, method, path, body=None, timeout=600):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = resp.read()
    return out


def jrequest(base, method, path, body=None):
    return json.loads(request(base, method, path, body) or b"{}")


def wait_up(base, path, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            request(base, "GET", path)
            return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{base} did not come up")


def batches(run_id, steps, keys):
    """Pre-serialized log-batch bodies: every key at each step, BATCH points per body."""
    points = [(k, s) for s in range(steps) for k in keys]
    out = []
    for i in range(0, len(points), BATCH):
        chunk = points[i:i + BATCH]
        metrics = [{"key": k, "value": 1.0 / (s + 1) + (0.5 if s % 997 == 0 else 0.0), "timestamp": 1_700_000_000_000 + s,
                    "step": s} for k, s in chunk]
        out.append(json.dumps({"run_id": run_id, "metrics": metrics}).encode())
    return out


def new_run(base, exp_name):
    try:
        exp = jrequest(base, "POST", "/api/2.0/mlflow/experiments/create", {"name": exp_name})["experiment_id"]
    except urllib.error.HTTPError:
        exp = jrequest(base, "GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={exp_name}")["experiment"]["experiment_id"]
    run = jrequest(base, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp, "start_time": 0})
    return exp, run["run"]["info"]["run_id"]


def ingest(base, clients, total_points):
    """total_points points by log-batch of 1,000, split among `clients` threads, each its own run."""
    per_client = total_points // clients
    steps = per_client // len(KEYS)
    bodies = []
    for c in range(clients):
        _, run = new_run(base, f"ingest-{clients}-{c}-{time.time()}")
        bodies.append(batches(run, steps, KEYS))

    def send(bs):
        for b in bs:
            request(base, "POST", "/api/2.0/mlflow/runs/log-batch", b)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(bs,)) for bs in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return clients * steps * len(KEYS) / dt


def timed(fn, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def history_mlflow_style(base, run, key):
    """Every page of the history, as MLflow's client pages it; timed to the last byte (the
    response is searched for the next page token, not parsed, so the client's JSON parsing does
    not count on either side)."""
    token, pages = None, 0
    while True:
        q = f"/api/2.0/mlflow/metrics/get-history?run_id={run}&metric_key={key}&max_results=25000"
        if token:
            q += f"&page_token={token}"
        body = request(base, "GET", q)
        pages += 1
        m = re.search(rb'"next_page_token"\s*:\s*"([^"]+)"', body)
        if not m:
            return pages
        token = m.group(1).decode()


def start_crt(binary, work):
    port = free_port()
    log = open(os.path.join(work, "crt.log"), "w")
    proc = subprocess.Popen([binary, "--bind", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "crt"),
                             "--trainer-bin", "/bin/false"], stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    wait_up(base, "/api/v1/health")
    return proc, base


def start_mlflow(binary, work):
    port = free_port()
    log = open(os.path.join(work, "mlflow.log"), "w")
    db = os.path.join(work, "mlflow.db")
    proc = subprocess.Popen([binary, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", os.path.join(work, "mlartifacts"), "--workers", "1"],
                            stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(base, "/health", 180)
    return proc, base


def measure(name, base, sampled):
    out = {}
    for clients in (1, 4):
        out[f"ingest_{clients}"] = ingest(base, clients, 200_000)
    # 10 runs of 20,000 steps x 10 keys for the read side.
    runs = []
    for r in range(10):
        _, run = new_run(base, f"compare-{time.time()}")
        for b in batches(run, STEPS, KEYS):
            request(base, "POST", "/api/2.0/mlflow/runs/log-batch", b)
        runs.append(run)
    out["history_20k"] = timed(lambda: history_mlflow_style(base, runs[0], "m0"))
    out["compare_key_10_runs"] = timed(lambda: sampled(base, runs, "m0"))
    return out, runs


def sampled_mlflow(base, runs, key):
    q = "&".join(f"run_ids={r}" for r in runs)
    request(base, "GET", f"/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?{q}&metric_key={key}&max_results=1000")


def sampled_crt(base, runs, key):
    for r in runs:
        request(base, "GET", f"/api/v1/runs/{r}/metrics?keys={key}&points=1000")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crt-server", required=True)
    ap.add_argument("--mlflow", default=shutil.which("mlflow"))
    ap.add_argument("--only", choices=["crt", "mlflow"])
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-mlflow-")
    procs = []
    results = {}
    try:
        if args.only != "mlflow":
            proc, base = start_crt(args.crt_server, work)
            procs.append(proc)
            r, runs = measure("crt", base, sampled_crt)
            r["compare_page_all_keys"] = timed(lambda: [request(base, "GET", f"/api/v1/runs/{x}/metrics?points=2000") for x in runs])
            r["run_page_all_keys"] = timed(lambda: request(base, "GET", f"/api/v1/runs/{runs[0]}/metrics?points=3000"))
            results["crt"] = r
            print("crt", json.dumps(r), flush=True)
        if args.only != "crt":
            proc, base = start_mlflow(args.mlflow, work)
            procs.append(proc)
            r, _ = measure("mlflow", base, sampled_mlflow)
            results["mlflow"] = r
            print("mlflow", json.dumps(r), flush=True)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM) if p.pid and os.getpgid(p.pid) == p.pid else p.terminate()
            except Exception:
                p.terminate()
        shutil.rmtree(work, ignore_errors=True)
    if "crt" in results and "mlflow" in results:
        c, m = results["crt"], results["mlflow"]
        rows = [
            ("log-batch ingest, 1 client (points/s)", m["ingest_1"], c["ingest_1"], c["ingest_1"] / m["ingest_1"]),
            ("log-batch ingest, 4 clients (points/s)", m["ingest_4"], c["ingest_4"], c["ingest_4"] / m["ingest_4"]),
            ("20,000-point history (ms)", m["history_20k"] * 1e3, c["history_20k"] * 1e3, m["history_20k"] / c["history_20k"]),
            ("one key, 10 runs, sampled (ms)", m["compare_key_10_runs"] * 1e3, c["compare_key_10_runs"] * 1e3,
             m["compare_key_10_runs"] / c["compare_key_10_runs"]),
        ]
        print("| measure | MLflow | CRT Lab | CRT Lab advantage |\n|---|---|---|---|")
        for name, a, b, ratio in rows:
            print(f"| {name} | {a:,.0f} | {b:,.0f} | {ratio:.1f}x |")
        print(f"compare page data, 10 runs, all keys: {c['compare_page_all_keys'] * 1e3:.0f} ms; "
              f"run page data: {c['run_page_all_keys'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
