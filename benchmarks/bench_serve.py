"""Load test of ``visiontrain serve`` on loopback: requests/s and p50/p99 latency of ``POST /predict``.

Starts the real CLI server (``visiontrain serve MODEL --port 0``) as a subprocess on 127.0.0.1, then sends
PNG uploads from client threads, each keeping one HTTP/1.1 connection open. Every run is bounded twice: at
most ``--requests`` requests per level and ``--seconds`` per level, whichever comes first; the server is
stopped at the end. Only 127.0.0.1 is ever contacted. Without MODEL, a small model is trained first on the
synthetic shapes (about a minute). Machines are noisy: compare levels and formats, not seconds.

    python benchmarks/bench_serve.py [RUN_OR_EXPORT ...] [--concurrency 1,4,16] [--requests 400] [--seconds 30]
    python benchmarks/bench_serve.py --onnx      # the trained run and its ONNX export, side by side
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from visiontrain.use.serve.client import start_server

HOST = "127.0.0.1"  # loopback only, by construction: the address is not a flag


def _png_bodies(count: int = 16) -> list[bytes]:
    from visiontrain.data.synthetic import make_shapes

    images, _ = make_shapes(count, 32, 3, seed=2024)
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _train_small(folder: Path) -> Path:
    import visiontrain

    cfg = {"data": {"name": "synthetic", "args": {"train": 800, "val": 100, "test": 100}},
           "train": {"epochs": 2}, "out": str(folder), "name": "bench"}
    return visiontrain.train(cfg, quiet=True).dir


def _start_server(model: str, threads: int, clients: int) -> tuple[subprocess.Popen, int]:
    # A queue as long as the clients are many: this measures throughput, not the server's load shedding (503).
    return start_server(model, "--log-level", "warning", "--threads", str(threads), "--queue", str(max(16, clients)),
                        host=HOST)


def _client(port: int, bodies: list[bytes], stop_at: float, budget: list[int], lock: threading.Lock,
            latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    i = 0
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        body = bodies[i % len(bodies)]
        i += 1
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict?top_k=1", body=body, headers={"Content-Type": "image/png"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                errors.append(f"{resp.status} {data[:80]!r}")
                continue
        except OSError as exc:  # a dropped connection counts as an error and is reopened
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            continue
        latencies.append(time.perf_counter() - start)
    conn.close()


def _level(port: int, bodies: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget, lock = [requests], threading.Lock()
    start = time.perf_counter()
    stop_at = time.monotonic() + seconds
    clients = [threading.Thread(target=_client, args=(port, bodies, stop_at, budget, lock, latencies, errors))
               for _ in range(concurrency)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors), "seconds": wall,
            "req_per_s": len(latencies) / wall if wall else 0.0, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="run folders or exports [default: train a small one]")
    parser.add_argument("--onnx", action="store_true", help="also export each run to ONNX and load-test that")
    parser.add_argument("--concurrency", default="1,4,16", help="client threads per level [default: 1,4,16]")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per level")
    parser.add_argument("--seconds", type=float, default=30.0, help="at most this long per level")
    parser.add_argument("--warmup", type=int, default=20, help="requests before measuring [default: 20]")
    parser.add_argument("--threads", type=int, default=4, help="the server's --threads [default: 4]")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or [str(_train_small(Path(tmp)))]
        if args.onnx:
            from visiontrain.use.export.write import export

            models += [str(export(m, "onnx", Path(tmp) / f"onnx{i}").path) for i, m in enumerate(models)]
        print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; loopback {HOST}; <= {args.requests} requests and <= {args.seconds:g} s "
              "per level")
        print("| model | clients | requests | errors | req/s | p50 ms | p99 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        rows = []
        bodies = _png_bodies()
        for model in models:
            proc, port = _start_server(model, args.threads, max(levels))
            try:
                _level(port, bodies, 1, args.warmup, args.seconds)
                for c in levels:
                    r = {"model": Path(model).name, **_level(port, bodies, c, args.requests, args.seconds)}
                    rows.append(r)
                    print(f"| {r['model']} | {c} | {r['requests']} | {r['errors']} | {r['req_per_s']:.1f} | "
                          f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
