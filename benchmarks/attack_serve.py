"""Attack ``visiontrain serve`` on loopback and measure what its users feel: small requests under a flood.

Starts the real CLI server (``visiontrain serve MODEL --port 0``) on 127.0.0.1 and runs, each bounded in time:

1. quiet: ``--clients`` threads send small PNGs (the model's own size) back to back: p50/p99 latency;
2. flood, once per ``--flood-side``: ``--flood`` threads send tiny PNGs that declare SIDE x SIDE pixels
   (a 6000-px one is 35 KB and decodes to 36 MP), while the same small clients are timed again;
3. slowloris: ``--slowloris`` connections send a request's headers (or, half of them, its body) one byte at
   a time, every ``--drip`` seconds; each is watched until the server closes it or ``--hold`` seconds pass.

Prints one table row per phase (status counts, small-request p50/p99/max) and the slowloris result.
Only 127.0.0.1 is ever contacted. The same script runs against any version of the server (it only uses the
CLI), so before/after numbers come from one script on one machine.

    python benchmarks/attack_serve.py RUN_OR_EXPORT [--flood 12] [--flood-side 6000,4000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import os
import socket
import subprocess
import threading
import time

from PIL import Image

from visiontrain.use.serve.client import start_server

HOST = "127.0.0.1"  # loopback only, by construction: the address is not a flag


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _small_bodies(size: int, count: int = 8) -> list[bytes]:
    from visiontrain.data.synthetic import make_shapes

    images, _ = make_shapes(count, size, 3, seed=7)
    return [_png(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images]


def _start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    return start_server(model, "--log-level", "error", *extra, host=HOST)


def _post(port: int, body: bytes, timeout: float) -> str:
    """One POST /predict on a fresh connection: the status code, or what went wrong."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", "/predict?top_k=1", body=body, headers={"Content-Type": "image/png"})
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except TimeoutError:
        return "client timeout"
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def _client(port: int, bodies: list[bytes], stop_at: float, timeout: float, statuses: collections.Counter,
            latencies: list[float] | None) -> None:
    i = 0
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        status = _post(port, bodies[i % len(bodies)], timeout)
        if latencies is not None:
            latencies.append(time.perf_counter() - start)
        statuses[status] += 1
        i += 1


def _phase(port: int, small: list[bytes], clients: int, big: bytes | None, flood: int, seconds: float,
           timeout: float) -> dict:
    small_status: collections.Counter = collections.Counter()
    big_status: collections.Counter = collections.Counter()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(port, small, stop_at, timeout, small_status, latencies))
               for _ in range(clients)]
    if big is not None:
        threads += [threading.Thread(target=_client, args=(port, [big], stop_at, timeout, big_status, None))
                    for _ in range(flood)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {"small": dict(small_status), "flood": dict(big_status), "small_requests": len(ordered),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": 1000 * ordered[-1] if ordered else float("nan")}


def _slowloris(port: int, count: int, drip: float, hold: float) -> dict:
    """``count`` connections trickling a request; seconds until the server closed each (None: still open)."""
    socks, closed_after = [], [None] * count
    for i in range(count):
        s = socket.create_connection((HOST, port), timeout=10)
        if i % 2:  # complete headers, then a body that never finishes
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n")
        else:  # headers that never finish
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    while time.monotonic() - start < hold and any(c is None for c in closed_after):
        for i, s in enumerate(socks):
            if closed_after[i] is not None:
                continue
            try:
                if s.recv(65536) == b"":  # the server closed it (any answer before counts too)
                    closed_after[i] = time.monotonic() - start
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed_after[i] = time.monotonic() - start
                continue
            try:
                s.send(b"x")
            except OSError:
                closed_after[i] = time.monotonic() - start
        time.sleep(drip)
    for s in socks:
        s.close()
    out: dict = {"connections": count, "held_s": round(time.monotonic() - start, 1)}
    for kind, times in (("headers", closed_after[0::2]), ("body", closed_after[1::2])):
        done = [round(c, 1) for c in times if c is not None]
        out[kind] = {"connections": len(times), "closed": len(done), "first_s": min(done, default=None),
                     "last_s": max(done, default=None)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run folder or export")
    parser.add_argument("--clients", type=int, default=4, help="timed small-request clients [default: 4]")
    parser.add_argument("--flood", type=int, default=12, help="flooding clients [default: 12]")
    parser.add_argument("--flood-side", default="6000,4000", help="declared side(s) of the flood PNGs (empty: none)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase [default: 20]")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout, s [default: 60]")
    parser.add_argument("--slowloris", type=int, default=20, help="slow connections [default: 20]")
    parser.add_argument("--drip", type=float, default=2.0, help="seconds between slow bytes [default: 2]")
    parser.add_argument("--hold", type=float, default=64.0, help="watch slow connections this long [default: 64]")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the server (repeat)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    proc, port = _start_server(args.model, args.server_arg)
    results = {"load": os.getloadavg()}
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.request("GET", "/model")
        size = json.loads(conn.getresponse().read())["input"]["size"]
        small = _small_bodies(size)
        print(f"# loopback {HOST}, {os.cpu_count()} cores, load {results['load'][0]:.2f}; {args.clients} small "
              f"clients, {args.flood} flooding, {args.seconds:g} s per phase")
        print("| phase | small requests | small statuses | flood statuses | p50 ms | p99 ms | max ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        phases = [("quiet", None)] + [(f"flood {s}x{s} PNG", int(s)) for s in args.flood_side.split(",") if s]
        for name, side in phases:
            big = _png(Image.new("L", (side, side))) if side else None
            r = _phase(port, small, args.clients, big, args.flood, args.seconds, args.timeout)
            results[name] = r | ({"flood_body_bytes": len(big)} if big else {})
            print(f"| {name} | {r['small_requests']} | {r['small']} | {r['flood'] or '-'} | {r['p50_ms']:.0f} | "
                  f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} |", flush=True)
        if args.slowloris:
            r = _slowloris(port, args.slowloris, args.drip, args.hold)
            results["slowloris"] = r
            for kind in ("headers", "body"):
                k = r[kind]
                print(f"slowloris, trickled {kind}: {k['closed']}/{k['connections']} closed by the server within "
                      f"{r['held_s']} s watched (after {k['first_s']}-{k['last_s']} s)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
