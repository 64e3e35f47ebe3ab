"""Peak memory and throughput of `mtlue protect`: many small images, and one large photo.

Each case runs `mtlue protect` in its OWN subprocess, so its peak RSS (ru_maxrss of that child, or
/usr/bin/time -v where present) is not mixed with the data generation or another case. A first case
protects two 8-px images: the floor every run pays (Python, torch, torchvision), so that the table can
say what the images themselves cost ("above the floor").

    python benchmarks/memory.py --images 10000 --size 32 --big 6000x4000

Prints a markdown table; writes nothing outside a temporary folder (RESULTS.md is owned elsewhere).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = {"shape": ["a", "b", "c"], "size": ["l", "s"]}


def make_small(root: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["path,shape,size"]
    for i in range(n):
        rel = f"d{i // 1000:02d}/img_{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(root / rel, compress_level=1)
        lines.append(f"{rel},{'abc'[i % 3]},{'ls'[i % 2]}")
    labels = root.parent / f"{root.name}.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def make_big(root: Path, width: int, height: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    # Smooth noise (a tiled random field, upscaled) compresses like a photo, unlike white noise.
    small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8), "RGB")
    small.resize((width, height), Image.Resampling.BILINEAR).save(root / "big.jpg", quality=90)
    labels = root.parent / f"{root.name}.csv"
    # Every task needs two classes: one 8x8 companion image carries the other labels.
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(root / "pad.png")
    labels.write_text("path,shape,size\nbig.jpg,a,l\npad.png,b,s\n")
    return labels


def make_generator(folder: Path) -> None:
    import torch

    from mtlue_cli.generator import PerturbationGenerator
    from mtlue_cli.hub import save_generator

    torch.manual_seed(0)
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=32), folder, method="tap")


def run_case(name: str, root: Path, labels: Path, gen: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "mtlue_cli", "protect", str(root), "--labels", str(labels), "--generator", str(gen),
           "--out", str(out), "--device", args.device, "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "-q"]
    timer = shutil.which("time") if Path("/usr/bin/time").exists() else None
    full = ["/usr/bin/time", "-v", *cmd] if timer else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name}: protect exited {proc.returncode}\n{proc.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if match:
        peak_kb = int(match.group(1))
    else:  # ru_maxrss is the max over all waited children: only meaningful if it grew
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak_kb <= before:
            print(f"warning: {name}: RUSAGE_CHILDREN did not grow; figure is an upper bound", file=sys.stderr)
    images = len(labels.read_text().splitlines()) - 1
    print(f"{name}: {peak_kb / 1024:.0f} MB peak, {seconds:.1f} s", file=sys.stderr)
    return {"case": name, "images": images, "peak_mb": peak_kb / 1024, "seconds": seconds,
            "ips": images / seconds, "command": " ".join(cmd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="small images in the many-files case")
    parser.add_argument("--size", type=int, default=32, help="side of the small images, px")
    parser.add_argument("--big", default="6000x4000", help="WxH of the large JPEG case ('' to skip)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mtlue-mem-"))
    rows = []
    try:
        gen = tmp / "gen"
        make_generator(gen)
        labels = make_small(tmp / "floor", 2, 8)
        rows.append(run_case("floor: 2 x 8px PNG", tmp / "floor", labels, gen, tmp / "out-floor", args))
        if args.images:
            t = time.perf_counter()
            labels = make_small(tmp / "small", args.images, args.size)
            print(f"made {args.images} {args.size}px PNGs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            rows.append(run_case(f"{args.images} x {args.size}px PNG", tmp / "small", labels, gen, tmp / "out-small", args))
        if args.big:
            w, h = (int(v) for v in args.big.lower().split("x"))
            labels = make_big(tmp / "big", w, h)
            rows.append(run_case(f"1 x {w}x{h} JPEG", tmp / "big", labels, gen, tmp / "out-big", args))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"protect options: --device {args.device} --batch-size {args.batch_size} --workers {args.workers}, "
          "generator image_size 32, lossless PNG output")
    print()
    floor = rows[0]["peak_mb"]
    print("| case | images | peak RSS (MB) | above the floor (MB) | seconds | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['images']} | {r['peak_mb']:.0f} | {r['peak_mb'] - floor:.0f} | {r['seconds']:.1f} "
              f"| {r['ips']:.2f} |")


if __name__ == "__main__":
    main()
