"""Peak memory and time of `mtlue protect` on many small images and on one large photo, and of `fit` reading its
decoded images through the memory-mapped cache. Rewrites its section of benchmarks/RESULTS.md.

    python benchmarks/memory.py --images 10000,100000 --size 32 --big 6000x4000 --fit-images 30000

Each case runs in its OWN subprocess, so its peak RSS (the child's ru_maxrss, from wait4) is not mixed with the
data generation or another case; a sampler reads the child's /proc status meanwhile (anonymous and file-backed
resident memory, where Linux has them) and the manifest's inode and size (append-only: the same file, never
shorter). A first case protects two 8-px images: the floor every run pays (Python, torch, torchvision, the
generator), so the table can say what the images themselves cost ("above the floor").

The many-images cases use nested folders (the 10,000 images are the first of the 100,000), synthetic 32-px PNGs
with labels in the bundled generator's class names, and the bundled face generator (`protect`'s for faces).
The fit cases decode the same synthetic set at 64 px into the `memory` and into the `mmap` cache
(`DataConfig.cache`; `auto` picks `mmap` past 4 GiB) and read it as `fit` does, without the training math.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
GENERATOR = "faces-utkface"


# ----------------------------------------------------------------------------- synthetic data


def generator_tasks(spec: str) -> dict[str, list[str]]:
    """The class names of a bundled generator's tasks (from its config, without loading torch)."""
    from mtlue_cli.models.persistence import load_generator

    return load_generator(spec).model.tasks


def picture(rng: np.random.Generator, size: int) -> Image.Image:
    """A flat background with a rectangle of another colour and mild noise: compresses like a simple picture."""
    pixels = np.empty((size, size, 3), np.int16)
    pixels[:] = rng.integers(30, 226, 3)
    top, left = rng.integers(0, size // 2, 2)
    pixels[top : top + size // 2, left : left + size // 2] = rng.integers(30, 226, 3)
    pixels += rng.integers(-6, 7, pixels.shape, dtype=np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def make_nested(root: Path, counts: list[int], size: int, tasks: dict[str, list[str]], seed: int = 0) -> list[tuple[Path, Path]]:
    """max(counts) PNGs in nested folders, so that the folder of each count holds exactly that many images (its
    first ones): [(root of the images, labels CSV)] per count, ascending."""
    counts = sorted(counts)
    folders = []
    folder = root
    for k in range(len(counts) - 1, -1, -1):  # the largest count is the outermost folder
        folder = folder / f"c{k}"
        folders.insert(0, folder)
    rng = np.random.default_rng(seed)
    names = list(tasks)
    rows: list[tuple[int, list[str]]] = []
    start = 0
    for k, count in enumerate(counts):
        for i in range(start, count):
            rel = Path(f"d{i // 1000:03d}") / f"img_{i:06d}.png"
            (folders[k] / rel).parent.mkdir(parents=True, exist_ok=True)
            picture(rng, size).save(folders[k] / rel, compress_level=1)
            rows.append((k, [rel.as_posix(), *(tasks[t][int(rng.integers(len(tasks[t])))] for t in names)]))
        start = count
    made = []
    for k, count in enumerate(counts):
        labels = root / f"labels-{count}.csv"
        lines = [",".join(["path", *names])]
        for at, row in rows[:count]:  # a path relative to folder k: the folders between k and where it lives
            inner = Path(*[f.name for f in folders[at:k]][::-1]) if at < k else Path()
            lines.append(",".join([(inner / row[0]).as_posix(), *row[1:]]))
        labels.write_text("\n".join(lines) + "\n")
        made.append((folders[k], labels))
    return made


def make_pair(root: Path, tasks: dict[str, list[str]], first: Image.Image, seed: int = 1) -> Path:
    """`first` and an 8-px companion whose labels are the other class of every task (a labels file needs two)."""
    root.mkdir(parents=True, exist_ok=True)
    first.save(root / ("big.jpg" if first.width > 64 else "a.png"), **({"quality": 90} if first.width > 64 else {}))
    picture(np.random.default_rng(seed), 8).save(root / "b.png")
    names = list(tasks)
    labels = root.parent / f"{root.name}.csv"
    labels.write_text(",".join(["path", *names]) + "\n"
                      + ",".join([("big.jpg" if first.width > 64 else "a.png"), *(tasks[t][0] for t in names)]) + "\n"
                      + ",".join(["b.png", *(tasks[t][1] for t in names)]) + "\n")
    return labels


def big_photo(width: int, height: int, seed: int = 1) -> Image.Image:
    """Smooth noise (a random field, upscaled): compresses like a photo, unlike white noise."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8), "RGB")
    return small.resize((width, height), Image.Resampling.BILINEAR)


# ----------------------------------------------------------------------------- one case in a child process


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of `pid` in kB (Linux; empty elsewhere or once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


class Sampler(threading.Thread):
    """Polls the child's memory and the manifest's (inode, size) until stopped."""

    def __init__(self, pid: int, manifest: Path | None, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.manifest, self.every = pid, manifest, every
        self.peaks: dict[str, int] = {}
        self.files: list[tuple[int, int]] = []  # (inode, size) of the manifest, in time order
        self.by_size: list[tuple[int, int]] = []  # (manifest size, VmRSS kB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status = _status(self.pid)
            for key, value in status.items():
                self.peaks[key] = max(self.peaks.get(key, 0), value)
            if self.manifest is not None and self.manifest.is_file():
                st = self.manifest.stat()
                self.files.append((st.st_ino, st.st_size))
                if "VmRSS" in status:
                    self.by_size.append((st.st_size, status["VmRSS"]))
            self.stop.wait(self.every)


def run_case(name: str, cmd: list[str], manifest: Path | None = None, images: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        sampler = Sampler(proc.pid, manifest)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"{name}: exited {proc.returncode}\n{log.read().decode(errors='replace')[-3000:]}")
    scale = 1 if sys.platform != "darwin" else 1024  # ru_maxrss: kB on Linux, bytes on macOS
    row = {"case": name, "images": images, "peak_mb": usage.ru_maxrss / scale / 1024, "seconds": seconds,
           "cpu_seconds": usage.ru_utime + usage.ru_stime,
           "peak_anon_mb": sampler.peaks.get("RssAnon", 0) / 1024, "peak_file_mb": sampler.peaks.get("RssFile", 0) / 1024,
           "peak_shmem_mb": sampler.peaks.get("RssShmem", 0) / 1024, "command": " ".join(cmd)}
    if manifest is not None:
        lines = manifest.read_text().count("\n") if manifest.is_file() else 0
        inodes = {ino for ino, _ in sampler.files}
        sizes = [size for _, size in sampler.files]
        row.update(manifest_lines=lines, manifest_samples=len(sizes),
                   append_only=len(inodes) <= 1 and all(a <= b for a, b in zip(sizes, sizes[1:])))
        final = sizes[-1] if sizes else 0
        row["rss_at"] = {f"{q:.0%}": next((rss / 1024 for size, rss in sampler.by_size if size >= q * final), None)
                         for q in (0.1, 0.5, 0.9)}
    print(f"{name}: {row['peak_mb']:.0f} MB peak, {seconds:.1f} s", file=sys.stderr, flush=True)
    return row


def protect_cmd(root: Path, labels: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "mtlue_cli", "protect", str(root), "--labels", str(labels), "--generator",
            args.generator, "--out", str(out), "--device", "cpu", "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "-q"]


def fit_child(root: str, labels: str, size: str, cache: str) -> None:
    """`--fit-child`: what `fit` does with its images, without the training math (an epoch over a cache this size
    is hours of CPU): decode them into the cache (`load_dataset`), read one epoch of shuffled batches as the
    generator and surrogate loops do (`to_float(images[idx])`), and fingerprint them as fit_record.json does."""
    import torch

    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.models.engine import batch_indices, to_float

    data = DataConfig(root=Path(root), labels=Path(labels), size=int(size), cache=cache, workers=os.cpu_count() or 1)
    dataset = load_dataset(data)
    total = 0.0
    for idx in batch_indices(len(dataset.images), 128, True, torch.Generator().manual_seed(0)):
        total += float(to_float(dataset.images[idx], torch.device("cpu")).mean())
    print(json.dumps({"images": len(dataset), "mean": total, "fingerprint": dataset.fingerprint()}))


# ----------------------------------------------------------------------------- the report


def machine() -> str:
    return (f"{platform.node() or 'host'}: {platform.machine()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; "
            f"Python {platform.python_version()}" if hasattr(os, "sysconf") else platform.platform())


def report(rows: list[dict[str, Any]], fits: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    floor = rows[0]["peak_mb"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {machine()}; load average at the end {load:.1f} (a shared machine: seconds are wall time, "
             "CPU seconds are the child's own)", "",
             "## Memory of `protect` on large collections", "",
             f"`mtlue protect DATA --labels CSV --generator {args.generator} --out OUT --device cpu --batch-size "
             f"{args.batch_size} --workers {args.workers} -q`, lossless PNG output; each case a fresh process.", "",
             "| case | images | peak RSS (MB) | above the floor (MB) | peak anonymous (MB) | seconds | CPU seconds | "
             "images/s | manifest |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        manifest = "-"
        if "manifest_lines" in r:
            manifest = (f"{r['manifest_lines']} lines, {'append-only' if r['append_only'] else 'REWRITTEN'} "
                        f"({r['manifest_samples']} samples)")
        lines.append(f"| {r['case']} | {r['images']} | {r['peak_mb']:.0f} | {r['peak_mb'] - floor:.0f} | "
                     f"{r['peak_anon_mb']:.0f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['images'] / r['seconds']:.1f} | {manifest} |")
    many = [r for r in rows if r.get("rss_at")]
    if many:
        lines += ["", "Resident memory while the manifest grew (MB, when it held 10% / 50% / 90% of its final size):", ""]
        for r in many:
            at = " / ".join("-" if v is None else f"{v:.0f}" for v in r["rss_at"].values())
            lines.append(f"- {r['case']}: {at}")
    if len(many) >= 2:
        a, b = many[0], many[-1]
        anon = b["peak_anon_mb"] - a["peak_anon_mb"]
        lines += ["", f"From {a['images']} to {b['images']} images the peak RSS grew {b['peak_mb'] - a['peak_mb']:.0f} MB and "
                  f"the peak anonymous memory {anon:.0f} MB ({anon * 2**20 / max(b['images'] - a['images'], 1):.0f} bytes "
                  "per image: the labels table, the output names and the per-file results the report and labels.csv are "
                  "built from); the images themselves are never all in memory."]
    if fits:
        cache = fits[0]["cache_mb"]
        lines += ["", "## `fit` through the memory-mapped cache", "",
                  f"{fits[0]['images']} synthetic images decoded at {args.fit_size} px: a cache of {cache:.0f} MB "
                  "(N x 3 x S x S bytes). Each case runs what `fit` does with its images (`load_dataset`, one epoch of "
                  "shuffled batches of 128 read as the generator and surrogate loops read them, the fingerprint "
                  "fit_record.json stores) without the training math: an epoch over this cache is hours of CPU here. "
                  "`mmap` keeps the cache in an unlinked file the kernel may page out: its pages count in RSS while "
                  "resident (this machine has RAM to spare, so they stay), so what must stay in RAM is the anonymous "
                  "part. The file is in the temporary folder (TMPDIR): where that is a tmpfs, the cache is RAM again "
                  "(the shared-memory column). `auto` picks `mmap` past 4 GiB; the `fit` command has no option to "
                  "force it.", "",
                  "| cache | peak RSS (MB) | peak anonymous (MB) | peak file-backed (MB) | peak shared memory (MB) "
                  "| seconds |", "|---|---:|---:|---:|---:|---:|"]
        for f in fits:
            lines.append(f"| {f['cache']} | {f['peak_mb']:.0f} | {f['peak_anon_mb']:.0f} | {f['peak_file_mb']:.0f} | "
                         f"{f['peak_shmem_mb']:.0f} | {f['seconds']:.1f} |")
        if len(fits) == 2:
            saved = fits[0]["peak_anon_mb"] - fits[1]["peak_anon_mb"]
            lines += ["", f"The mmap cache takes {saved:.0f} MB of the {cache:.0f} MB off the anonymous peak."]
    return "\n".join(lines)


def write_results(body: str) -> None:
    from strength import write_section  # benchmarks/ is the script's folder

    write_section("memory-cpu", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="10000,100000", help="comma list: images in each many-files case")
    parser.add_argument("--size", type=int, default=32, help="side of the small images, px")
    parser.add_argument("--big", default="6000x4000", help="WxH of the large JPEG case ('' to skip)")
    parser.add_argument("--fit-images", type=int, default=100000, help="images in the fit cases (0 to skip)")
    parser.add_argument("--fit-size", type=int, default=64, help="working size of the fit cases, px")
    parser.add_argument("--generator", default=GENERATOR)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--fit-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        fit_child(*args.fit_child)
        return
    command = " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]])
    counts = sorted(int(c) for c in args.images.split(",") if c.strip()) if args.images else []
    tasks = generator_tasks(args.generator)

    tmp = Path(tempfile.mkdtemp(prefix="mtlue-mem-"))
    rows, fits = [], []
    try:
        labels = make_pair(tmp / "floor", tasks, picture(np.random.default_rng(0), 8))
        rows.append(run_case("floor: 2 x 8px PNG", protect_cmd(tmp / "floor", labels, tmp / "out-floor", args), images=2))
        shutil.rmtree(tmp / "out-floor")
        sets = sorted(set(counts + ([args.fit_images] if args.fit_images else [])))
        if sets:
            t = time.perf_counter()
            by_count = dict(zip(sets, make_nested(tmp / "small", sets, args.size, tasks)))
            print(f"made {sets[-1]} {args.size}px PNGs in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
            for count in counts:
                root, labels = by_count[count]
                out = tmp / f"out-{count}"
                rows.append(run_case(f"{count} x {args.size}px PNG", protect_cmd(root, labels, out, args),
                                     manifest=out / "manifest.jsonl", images=count))
                shutil.rmtree(out)
            if args.fit_images:
                root, labels = by_count[args.fit_images]
                for cache in ("memory", "mmap"):
                    row = run_case(f"fit's data path, {cache} cache", [sys.executable, str(Path(__file__).resolve()),
                                   "--fit-child", str(root), str(labels), str(args.fit_size), cache], images=args.fit_images)
                    row.update(cache=cache, cache_mb=args.fit_images * 3 * args.fit_size**2 / 2**20)
                    fits.append(row)
        if args.big:
            w, h = (int(v) for v in args.big.lower().split("x"))
            labels = make_pair(tmp / "big", tasks, big_photo(w, h))
            rows.append(run_case(f"1 x {w}x{h} JPEG", protect_cmd(tmp / "big", labels, tmp / "out-big", args), images=2))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    (HERE / "_work").mkdir(exist_ok=True)
    (HERE / "_work" / "memory.json").write_text(json.dumps({"rows": rows, "fits": fits}, indent=2))
    body = report(rows, fits, args, command)
    print(body)
    if not args.no_write:
        write_results(body)


if __name__ == "__main__":
    main()
