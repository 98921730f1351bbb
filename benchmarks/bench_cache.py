"""Memory and time of the in-memory image-folder cache: peak RSS while building it, against its size.

A folder of JPEG photos is generated once; each measurement is a fresh Python process that builds the training
loader with ``cache: memory`` (``build_data``, the code ``visiontrain train`` runs) and reports:

* the cache's size (the uint8 tensor it ends with),
* the process's resident memory before building (after a warm-up build with ``cache: off``, so that imports
  and the folder scan are not counted) and its peak while building (``VmHWM`` of ``/proc/self/status``,
  reset just before the build through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is missing),
* ratio = (peak - before) / cache size: 1.0 is the floor (the cache itself), the goal is <= 1.2,
* CPU-seconds of the process (and, separately, of its DataLoader workers) and wall seconds.

Two pipelines: ``photos`` (random resized crops run per image from the cache, in DataLoader workers reading
shared memory) and ``none`` (the cache is the model's input). ``--src DIR`` runs the children on another
checkout's ``src`` (e.g. the code before a change), so before/after come from the same script and folder:

    python benchmarks/bench_cache.py --images 10000 --side 224         # the issue's 1.8 GiB case (slow)
    python benchmarks/bench_cache.py --images 2000 --src /tmp/base/src  # the code of another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_loader import make_folder  # the same generated photos as the loader benchmark

_CHILD = r"""
import json, os, resource, sys, time
from visiontrain.config import DataConfig
from visiontrain.data import build_data

def status(key):
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

root, aug, side, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = DataConfig(name=root, batch_size=64, val_split=0.0, workers=workers, cache="memory", normalize="none",
                 transforms={"train": aug})
# Warm-up: the same build streaming (cache off), so that what build_data imports and scans once is not
# counted against the cache.
build_data(DataConfig(name=root, batch_size=64, val_split=0.0, workers=0, cache="off", normalize="none",
                      transforms={"train": aug}), 0, size=side, splits=("train",))
try:  # resets VmHWM to the current RSS (Linux >= 4.0): the peak of the build alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    exact = True
except OSError:
    exact = False
before = status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cpu, wall = time.process_time(), time.perf_counter()
bundle = build_data(cfg, 0, size=side, splits=("train",))
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
peak = (status("VmHWM") if exact else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loader = bundle.loaders["train"]
images = loader.images if hasattr(loader, "images") and loader.images is not None else loader.split.images
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cache": images.numel(), "shape": list(images.shape), "before": before, "peak": peak,
                  "cpu_s": cpu, "workers_cpu_s": children.ru_utime + children.ru_stime, "wall_s": wall,
                  "exact_peak": exact}))
"""


def measure(root: Path, aug: str, side: int, workers: int, src: str | None = None) -> dict:
    """One fresh process building the cache; its JSON report."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), aug, str(side), str(workers)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"the measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos in the generated folder")
    parser.add_argument("--photo", default="500x375", help="the generated photos' WIDTHxHEIGHT")
    parser.add_argument("--side", type=int, default=224, help="the model's input side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1, help="fresh processes per row")
    parser.add_argument("--augment", nargs="+", default=["photos", "none"], help="training presets to measure")
    parser.add_argument("--folder", help="keep the generated photos here and reuse them when present")
    parser.add_argument("--src", action="append", default=[],
                        help="a checkout's src folder to measure (repeatable; default: this process's visiontrain)")
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {os.cpu_count()} CPUs | load {load} | "
          f"{args.images} JPEGs {args.photo} | side {args.side} | {args.workers} workers")
    print("| code | augment | cache MiB | RSS before MiB | peak MiB | (peak - before) / cache | CPU-s (workers) | "
          "wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="vt-cache-") as tmp:
        root = Path(args.folder or Path(tmp) / "photos")
        if len(list(root.glob("*/*.jpg"))) != args.images:
            width, height = (int(v) for v in args.photo.split("x"))
            make_folder(root, args.images, width, height)
        for _ in range(args.reps):
            for src in args.src or [None]:
                for aug in args.augment:
                    r = measure(root, aug, args.side, args.workers, src)
                    mib = 2**20
                    ratio = (r["peak"] - r["before"]) / r["cache"]
                    print(f"| {src or 'this'} | {aug} | {r['cache'] / mib:,.0f} | {r['before'] / mib:,.0f} | "
                          f"{r['peak'] / mib:,.0f} | {ratio:.2f}x | {r['cpu_s']:.1f} ({r['workers_cpu_s']:.1f}) | "
                          f"{r['wall_s']:.1f} |", flush=True)
    with open("/proc/loadavg") as f:
        print(f"# load after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
