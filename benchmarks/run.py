"""Benchmarks: speed against the obvious alternatives, and protection strength on UTKFace.

    python benchmarks/run.py --suite quick            # CPU-sized: speed at 32 px, TAP strength at 32 px
    python benchmarks/run.py --suite full             # + EM/SEP, per-sample baselines, 64/128 px, 1k/3k images
    python benchmarks/run.py --only speed             # one part
    python benchmarks/run.py --only protect           # protect img/s against decode + PNG encode alone (minutes)
    python benchmarks/run.py --only protect --before REV   # + protect as at git revision REV, in turn with now

Each part rewrites its own section of benchmarks/RESULTS.md (between markers, one per device kind),
with the command, machine, date and versions. Speeds are ratios against a baseline measured in the
same run, because a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from strength import write_section as replace_section  # noqa: E402  (benchmarks/ is the script's folder)

from mtlue_cli import __version__  # noqa: E402
from mtlue_cli.config import DataConfig, FitConfig, ProtectConfig, VerifyConfig, default_crop  # noqa: E402
from mtlue_cli.data.dataset import load_dataset, split_indices  # noqa: E402
from mtlue_cli.data.images import open_image, to_working  # noqa: E402
from mtlue_cli.data.labels import read_labels  # noqa: E402
from mtlue_cli.files import file_sha256  # noqa: E402
from mtlue_cli.fit.loop import fit_generator  # noqa: E402
from mtlue_cli.fit.losses import embedding_regulariser, sep_loss, tap_loss  # noqa: E402
from mtlue_cli.models.classifiers import MTLClassifier  # noqa: E402
from mtlue_cli.models.engine import (  # noqa: E402
    ClassifierTrainer,
    augment,
    resolve_device,
    seed_everything,
    to_float,
    train_classifier,
)
from mtlue_cli.models.generator import PerturbationGenerator  # noqa: E402
from mtlue_cli.models.persistence import LoadedGenerator, load_generator  # noqa: E402
from mtlue_cli.protect.protect import protect_dataset  # noqa: E402
from mtlue_cli.protect.threads import resolve_workers  # noqa: E402
from mtlue_cli.verify.run import verify  # noqa: E402

RESULTS = HERE / "RESULTS.md"
WORK = HERE / "_work"
UTK = HERE.parent.parent / "shared" / "data" / "utkface"
PROTECT_GENERATOR = "faces-utkface"  # the bundled face generator: what `protect` runs on faces


def machine() -> str:
    device = resolve_device("auto")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU"
    return (f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__}, mtlue {__version__}")


def write_section(name: str, body: str, command: str) -> None:
    """Replace this device kind's section `name` of RESULTS.md, stamped with the command, date and machine."""
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    replace_section(f"{name}-{kind}", f"`{command}` ({stamp})\n\nMachine: {machine()}\n\n{body.strip()}")


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def flops_per_call(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- speed


def machine_conv_gflops() -> float:
    """The machine's measured fp32 conv throughput: the physical limit the generator is judged against."""
    x, w = torch.randn(32, 128, 32, 32), torch.randn(128, 128, 3, 3)
    flops = 2 * 32 * 128 * 128 * 9 * 32 * 32
    with torch.inference_mode():
        return flops / timed(lambda: F.conv2d(x, w, padding=1), repeat=5) / 1e9


def spread(total: int, n: int) -> list[int]:
    """n indices spread over the set (the files are sorted by age, so the first n are one age bin)."""
    return [round(i * total / n) for i in range(min(n, total))]


def utk_subset(n: int, size: int) -> Any:
    ds = load_dataset(DataConfig(root=UTK / "images", labels=UTK / "labels.csv", size=size))
    return ds.subset(spread(len(ds), n))


def official_batches(paths: list[Path], labels: torch.Tensor, size: int, batch: int):
    """The straightforward loop: decode every JPEG every epoch (no cache)."""
    for i in range(0, len(paths), batch):
        imgs = [np.asarray(to_working(open_image(p).image, size)) for p in paths[i : i + batch]]
        yield torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255, labels[i : i + batch]


def fit_speed(n: int, size: int, n_ckpt: int, batch: int = 32) -> list[tuple[str, float, float]]:
    """Generator-epoch images/s: ours (cached uint8, δ once for SEP) vs the official loop shape."""
    ds = utk_subset(n, size)
    nc, crop = ds.spec.num_classes, default_crop(size)
    paths = [ds.table.root / r.path for r in ds.records]
    torch.manual_seed(0)
    g = PerturbationGenerator(ds.spec.to_dict(), image_size=size)
    opt = torch.optim.Adam(g.parameters(), 1e-3)
    surrogates = [MTLClassifier(nc, image_size=crop).eval().requires_grad_(False) for _ in range(n_ckpt)]
    gen = torch.Generator().manual_seed(0)

    def ours(method: str) -> None:
        for i in range(0, n, batch):
            x, y = to_float(ds.images[i : i + batch], torch.device("cpu")), ds.labels[i : i + batch]
            xp = (x + g(x, y)).clamp(0, 1)
            if method == "tap":
                loss = tap_loss(surrogates[0](augment(xp, crop, gen)), y, nc, "targeted")
            else:
                loss = sep_loss([s(xp) for s in surrogates], y, nc) * 1
            loss = loss + embedding_regulariser(g.embedding_weights())
            opt.zero_grad()
            loss.backward()
            opt.step()

    def official(method: str) -> None:
        for x, y in official_batches(paths, ds.labels, size, batch):
            if method == "tap":
                top, left = np.random.randint(0, size - crop + 1, 2)  # one crop for the whole batch (§13.5)
                xp = x + g(x, y)
                loss = tap_loss(surrogates[0](xp[..., top : top + crop, left : left + crop]), y, nc, "targeted")
                loss = loss + embedding_regulariser(g.embedding_weights())
                opt.zero_grad()
                loss.backward()
            else:  # δ regenerated for every checkpoint (§11)
                opt.zero_grad()
                for s in surrogates:
                    xp = x + g(x, y)
                    (sep_loss([s(xp)], y, nc) + embedding_regulariser(g.embedding_weights())).backward()
            opt.step()

    rows = []
    for method in ("tap", "sep"):
        t_ours = timed(lambda: ours(method))
        t_off = timed(lambda: official(method))
        rows.append((f"fit {method.upper()} ({n} img, {size} px{f', {n_ckpt} ckpts' if method == 'sep' else ''})",
                     n / t_ours, n / t_off))
    return rows


def victim_speed(n: int, size: int, batch: int = 64) -> tuple[str, float, float]:
    """Victim training images/s: cached tensors + per-sample GPU-friendly aug vs a torchvision DataLoader loop."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    ds = utk_subset(n, size)
    nc, crop = ds.spec.num_classes, default_crop(size)
    paths = [ds.table.root / r.path for r in ds.records]

    class Files(Dataset):
        tf = v2.Compose([v2.Resize((size, size)), v2.RandomCrop(crop), v2.RandomHorizontalFlip(),
                         v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> Any:
            return self.tf(open_image(paths[i]).image), ds.labels[i]

    def ours() -> None:
        seed_everything(0)
        trainer = ClassifierTrainer(MTLClassifier(nc, image_size=crop), nc)
        train_classifier(trainer, ds.images, ds.labels, epochs=1, batch_size=batch, crop=crop, gen=torch.Generator())

    def plain() -> None:
        seed_everything(0)
        trainer = ClassifierTrainer(MTLClassifier(nc, image_size=crop), nc)
        for x, y in DataLoader(Files(), batch_size=batch, shuffle=True, drop_last=True):
            trainer.step(x, y)

    return (f"verify victim ({n} img, {size} px)", n / timed(ours), n / timed(plain))


ZLIB_DEFAULT: dict[str, Any] = {}  # Pillow's PNG default (zlib level 6, default strategy): protect's before issue 17


@contextlib.contextmanager
def protected_png(options: dict[str, Any]) -> Iterator[None]:
    """protect's PNG encoder options swapped for `options` (the benchmark compares encoder settings)."""
    from mtlue_cli.data.images import PROTECTED_PNG

    kept = dict(PROTECTED_PNG)
    PROTECTED_PNG.clear()
    PROTECTED_PNG.update(options)
    try:
        yield
    finally:
        PROTECTED_PNG.clear()
        PROTECTED_PNG.update(kept)


def png_name(options: dict[str, Any]) -> str:
    return "zlib RLE" if options.get("compress_type") == zlib.Z_RLE else "zlib default, level 6"


def decode_encode_rate(paths: list[Path], workers: int, scratch: Path, options: dict[str, Any]) -> tuple[float, float]:
    """The ceiling protect is judged against: decode each file and write it as PNG with the encoder options
    protect uses, nothing else, with the same number of threads: (img/s, CPU ms per image of this process)."""
    from concurrent.futures import ThreadPoolExecutor

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    def one(path: Path) -> None:
        open_image(path).image.save(scratch / (path.name + ".png"), "PNG", **options)

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    shutil.rmtree(scratch, ignore_errors=True)
    return len(paths) / seconds, 1000 * cpu / len(paths)


def protect_steps(paths: list[Path], g: nn.Module) -> list[str]:
    """CPU ms per image of each step protect takes (encode.write_protected's, in its order), one thread (thread
    CPU time, so the machine's other load hardly counts), beside the ceiling's two, for protect's PNG encoder
    options and for zlib's default: where protect's time goes and the most it can reach."""
    from mtlue_cli.data.images import PROTECTED_PNG, protect_image, rows_of
    from mtlue_cli.metrics import linf, squared_error, ssim_sum
    from mtlue_cli.protect.encode import _read_back
    from mtlue_cli.protect.threads import generator_threads

    steps: dict[str, float] = {}
    size, epsilon, shipped = g.image_size, float(g.epsilon), dict(PROTECTED_PNG)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        start = time.thread_time()
        value = fn()
        steps[name] = steps.get(name, 0.0) + time.thread_time() - start
        return value

    scratch = WORK / "steps"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    g = g.cpu()
    with generator_threads(torch.device("cpu"), resolve_workers(ProtectConfig(workers=0))), torch.inference_mode():
        x, y = torch.rand(32, 3, size, size), torch.zeros(32, len(g.tasks), dtype=torch.long)
        g(x, y)  # warm-up
        start = time.thread_time()
        deltas = g(x, y)
        generator_ms = 1000 * (time.thread_time() - start) / 32
    for i, path in enumerate(paths):
        target = scratch / "p.png"
        d = step("decode JPEG", lambda: open_image(path))
        step("resize to the working size", lambda: np.asarray(to_working(d.image, size)))
        delta = deltas[i % 32]  # the generator's own δ: how well a file compresses depends on it
        step("sha256 of the source", lambda: file_sha256(path))
        protected = step("upsample δ + compose (in bands of rows)", lambda: protect_image(d.image, delta, epsilon))
        for options in (ZLIB_DEFAULT, shipped):  # protect's last: the file re-read below
            step(f"PNG encode + write ({png_name(options)})", lambda: protected.save(target, "PNG", **options))
        back = step("re-read the written PNG", lambda: _read_back(target, d.image.mode)[0])
        a, b = rows_of(back, 0, back.height), rows_of(d.image, 0, d.image.height)
        step("L-inf + PSNR", lambda: (linf(a, b), squared_error(a, b)))
        step("SSIM (separable Gaussian)", lambda: ssim_sum(a, b, 11))
        step("sha256 of the written file", lambda: file_sha256(target))
        for options in (shipped, ZLIB_DEFAULT):
            step(f"ceiling: PNG encode + write of the original pixels ({png_name(options)})",
                 lambda: d.image.save(scratch / "c.png", "PNG", **options))
    shutil.rmtree(scratch, ignore_errors=True)
    ms = {"generator (batch 32, per image, protect's threads)": generator_ms,
          **{k: 1000 * v / len(paths) for k, v in steps.items()}}
    lines = ["| step (one thread, CPU time) | ms/img |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in ms.items())]
    gen, notes = ms["generator (batch 32, per image, protect's threads)"], [""]
    for options in (shipped, ZLIB_DEFAULT):
        name = png_name(options)
        other = png_name(ZLIB_DEFAULT if options is shipped else shipped)
        ours = sum(v for k, v in ms.items() if not k.startswith("ceiling") and other not in k)
        ceiling = ms["decode JPEG"] + ms[f"ceiling: PNG encode + write of the original pixels ({name})"]
        lines.append(f"| **protect, all steps, {name}** | **{ours:.1f}** |")
        lines.append(f"| **ceiling: decode + PNG encode, {name}** | **{ceiling:.1f}** |")
        notes.append(f"- {name}{' (protect now)' if options is shipped else ''}: on a saturated CPU protect can reach at "
                     f"most {ceiling / ours:.0%} of its ceiling; without the generator's own {gen:.1f} ms, "
                     f"{ceiling / (ours - gen):.0%}.")
    return lines + notes


def random_generator(size: int) -> LoadedGenerator:
    """A freshly initialised generator for UTKFace's tasks at `size` px (its speed, not its protection)."""
    table = read_labels(DataConfig(root=UTK / "images", labels=UTK / "labels.csv"))
    torch.manual_seed(0)
    g = PerturbationGenerator(table.spec.to_dict(), image_size=size).eval()
    return LoadedGenerator(g, "local", f"random {size} px", WORK, None, "-", {}, None)


def folder_kb(out: Path) -> float:
    files = list(out.rglob("*.png"))
    return sum(f.stat().st_size for f in files) / max(len(files), 1) / 1024


def protect_speed(loaded: LoadedGenerator, encoders: tuple[dict[str, Any], ...] | None = None) -> list[str]:
    """protect on the whole shared UTKFace folder, read in place (its licence allows no copies in the repo, and
    read_labels refuses links that leave the image root), against decode + PNG encode of the same files with
    the same encoder options, once per encoder setting in `encoders` (default: protect's own)."""
    from mtlue_cli.data.images import PROTECTED_PNG
    from mtlue_cli.protect.threads import generator_threads

    g, size = loaded.model.eval(), loaded.model.image_size
    data = DataConfig(root=UTK / "images", labels=UTK / "labels.csv", size=size)
    table = read_labels(data)
    n = len(table.records)
    out = WORK / f"protect{n}-{size}"
    workers = resolve_workers(ProtectConfig(workers=0))  # --workers' default: the cores this process may use
    paths = [table.root / r.path for r in table.records]
    rows = []
    for options in encoders or (dict(PROTECTED_PNG),):
        shutil.rmtree(out, ignore_errors=True)
        # The ceiling before and after protect (the mean of both), so a drift of the shared machine shows in neither.
        before, cpu_before = decode_encode_rate(paths, workers, WORK / "ceiling", options)
        cpu = time.process_time()
        with protected_png(options):
            report = protect_dataset(loaded, data, out, ProtectConfig(device="auto", workers=0))
        cpu = 1000 * (time.process_time() - cpu) / n
        kb = folder_kb(out)
        shutil.rmtree(out, ignore_errors=True)  # protected copies of the shared images: none stay in the repo
        after, cpu_after = decode_encode_rate(paths, workers, WORK / "ceiling", options)
        rows.append((options, report, kb, before, (before + after) / 2, cpu, (cpu_before + cpu_after) / 2))
    device = next(g.parameters()).device  # protect moved it to its device (CUDA where there is one)
    x = torch.rand(32, 3, size, size, device=device)
    y = torch.zeros(32, len(g.tasks), dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with generator_threads(device, workers) as threads, torch.inference_mode():
        t_gen = timed(lambda: (g(x, y), sync()), repeat=3) / 32
        flops = flops_per_call(lambda: g(x[:1], y[:1]))
    peak = machine_conv_gflops()  # the CPU's: on a GPU the percentage below is not a ceiling
    achieved = flops / t_gen / 1e9
    lines = []
    for options, report, kb, before, ceiling, cpu, cpu_ceiling in rows:
        name = png_name(options)
        lines += [
            f"| protect end to end ({n} UTKFace 200x200 JPEG -> PNG, {name}; generator {loaded.spec} ({size} px), "
            f"{workers} threads) | {report.images_per_second:.1f} img/s; {cpu:.1f} CPU ms/img | "
            f"**{report.images_per_second / ceiling:.0%} of the ceiling below** (wall clock); "
            f"{cpu_ceiling / cpu:.0%} by CPU time; generator share {t_gen * report.images_per_second:.0%} of the time; "
            f"{kb:.1f} KB/file; max L-inf {report.max_linf_255}/255, PSNR {report.mean_psnr:.2f} dB, "
            f"SSIM {report.mean_ssim:.4f} |",
            f"| ceiling: decode + PNG encode alone, {name} (same {n} files, {workers} threads, mean of before and "
            f"after) | {ceiling:.1f} img/s; {cpu_ceiling:.1f} CPU ms/img | {before:.1f} before, {2 * ceiling - before:.1f} after |",
        ]
    lines.append(
        f"| generator forward ({size} px, batch 32, fp32, {threads if device.type == 'cpu' else 'its'} "
        f"thread{'s' if device.type != 'cpu' or threads > 1 else ''} as in protect) | {1 / t_gen:.1f} img/s | "
        f"{flops / 1e9:.2f} GFLOP/img, {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of this machine's measured conv "
        f"peak ({peak:.1f} GFLOP/s, all threads) |")
    return lines


BEFORE_CHILD = """
import json, shutil, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.models.persistence import load_generator
from mtlue_cli.protect.protect import protect_dataset
root, out = Path(sys.argv[2]), Path(sys.argv[3])
shutil.rmtree(out, ignore_errors=True)
report = protect_dataset(load_generator(sys.argv[4]), DataConfig(root=root / "images", labels=root / "labels.csv"), out,
                         ProtectConfig(device="cpu", workers=0))
files = list(out.glob("*.png"))
print(json.dumps({"ips": report.images_per_second, "kb": sum(f.stat().st_size for f in files) / len(files) / 1024,
                  "ssim": report.mean_ssim, "psnr": report.mean_psnr, "linf": report.max_linf_255}))
shutil.rmtree(out, ignore_errors=True)
"""


def protect_before_after(rev: str, rounds: int = 2) -> list[str]:
    """protect as it was at git revision `rev` against the working tree, each in its own process, in turn (a shared
    machine drifts): img/s as the report gives it, and the child's CPU ms per image (start-up included)."""
    import subprocess
    import tempfile

    tree = WORK / "before"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "mtlue_cli", "pretrained"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    n = len(read_labels(DataConfig(root=UTK / "images", labels=UTK / "labels.csv")).records)
    runs: dict[str, list[dict[str, float]]] = {rev: [], "now": []}
    for _ in range(rounds):
        for name, path in ((rev, tree), ("now", HERE.parent)):
            with tempfile.TemporaryFile("w+") as out:
                child = subprocess.Popen([sys.executable, "-c", BEFORE_CHILD, str(path), str(UTK),
                                          str(WORK / "before-out"), PROTECT_GENERATOR], stdout=out,
                                         stderr=subprocess.DEVNULL, text=True)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU time
                if os.waitstatus_to_exitcode(status):
                    sys.exit(f"protect as at {name} failed")
                out.seek(0)
                result = json.loads(out.read().strip().splitlines()[-1])
            runs[name].append({**result, "cpu": usage.ru_utime + usage.ru_stime})
    shutil.rmtree(tree, ignore_errors=True)
    lines = [f"| protect (all {n} files) | img/s, run by run | CPU ms/img | KB/file | mean SSIM | mean PSNR | max L-inf |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        speeds = ", ".join(f"{r['ips']:.1f}" for r in rs)
        lines.append(f"| {'as at ' + rev if name == rev else 'now'} | {speeds} | "
                     f"{1000 * np.mean([r['cpu'] for r in rs]) / n:.1f} | {rs[0]['kb']:.2f} | {rs[0]['ssim']:.6f} | "
                     f"{rs[0]['psnr']:.3f} dB | {rs[0]['linf']}/255 |")
    return lines


def run_protect_speed(command: str, before: str | None = None) -> None:
    """`--only protect`: the protect lines alone, in a section of their own (minutes, not the speed suite's hour)."""
    from mtlue_cli.data.images import PROTECTED_PNG

    load = os.getloadavg()[0]  # a shared machine: the other load at the start, for the reader
    lines = ["## Protect throughput against its ceiling", "", f"Load average at the start: {load:.1f}.", "",
             "Protect runs decode, the generator and compose/encode/verify-by-re-reading in overlapped worker "
             "threads; the ceiling is what decoding and PNG-encoding the same files alone reaches with the same "
             "threads and the same PNG encoder options. Both encoder settings are measured in this run: protect's "
             "(zlib's run-length strategy, since issue 17) and zlib's default (before).", "",
             "| what | throughput | notes |", "|---|---|---|"]
    loaded = load_generator(PROTECT_GENERATOR)
    lines += protect_speed(loaded, (dict(PROTECTED_PNG), ZLIB_DEFAULT))
    table = read_labels(DataConfig(root=UTK / "images", labels=UTK / "labels.csv"))
    chosen = [table.root / table.records[i].path for i in spread(len(table.records), 200)]
    lines += ["", "Where the time goes (200 of the files):", "", *protect_steps(chosen, loaded.model)]
    if before:
        lines += ["", f"protect as at `{before}` and now, each in a process of its own, in turn (same generator, "
                  "files, threads, defaults):", "", *protect_before_after(before)]
    write_section("protect-speed", "\n".join(lines), command)


def run_speed(suite: str, command: str) -> None:
    sizes = [32] if suite == "quick" else [32, 64, 128]
    counts = [256] if suite == "quick" else [1000, 3000]
    lines = ["## Speed", "", "| what | ours (img/s) | baseline (img/s) | ratio |", "|---|---|---|---|"]
    for size in sizes:
        for n in counts:
            for name, ours, base in fit_speed(n, size, n_ckpt=15 if suite == "full" else 5):
                lines.append(f"| {name}: ours vs official loop | {ours:.1f} | {base:.1f} | **{ours / base:.2f}x** |")
            name, ours, base = victim_speed(n, size)
            lines.append(f"| {name}: ours vs torchvision DataLoader loop | {ours:.1f} | {base:.1f} | **{ours / base:.2f}x** |")
    lines += ["", "| what | throughput | notes |", "|---|---|---|"]
    for size in sizes:
        lines += protect_speed(random_generator(size))
    write_section("speed", "\n".join(lines), command)


# ----------------------------------------------------------------------------- strength


class ClasswisePatterns(nn.Module):
    """Surrogate-free baseline (method-spec §9.2 classwise_spatial): a fixed random ±ε pattern per class
    of every task, summed over tasks and divided by K."""

    def __init__(self, tasks: dict[str, list[str]], size: int, epsilon: float = 8 / 255, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.tasks, self.image_size, self.epsilon, self.in_channels = tasks, size, epsilon, 3
        self.patterns = [torch.randint(0, 2, (len(c), 3, size, size), generator=gen).float() * 2 - 1 for c in tasks.values()]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = sum(p[y[:, k]] for k, p in enumerate(self.patterns)) / len(self.patterns)
        return (delta * self.epsilon).to(x.dtype)


class PerSampleTAP(nn.Module):
    """Per-sample TAP baseline (method-spec §9.1): PGD 20 x 0.8/255 towards the shifted targets of the clean
    surrogate, projected on the ε-ball, x+δ clamped."""

    def __init__(self, tasks: dict[str, list[str]], size: int, surrogate: nn.Module, crop: int, epsilon: float = 8 / 255) -> None:
        super().__init__()
        self.tasks, self.image_size, self.epsilon, self.in_channels = tasks, size, epsilon, 3
        self.surrogate, self.crop, self.nc = surrogate.eval(), crop, [len(c) for c in tasks.values()]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            x, y = x.clone(), y.clone()
            delta = (torch.rand_like(x) * 2 - 1) * self.epsilon
            for _ in range(20):
                delta.requires_grad_(True)
                xp = (x + delta).clamp(0, 1)
                top = (x.shape[-1] - self.crop) // 2
                loss = tap_loss(self.surrogate(xp[..., top : top + self.crop, top : top + self.crop]), y, self.nc, "targeted")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() - 0.8 / 255 * grad.sign()).clamp(-self.epsilon, self.epsilon)
            return delta.detach()


def strength_row(name: str, loaded: LoadedGenerator, data: DataConfig, size: int, epochs: int,
                 defenses: tuple[str, ...], stl: bool) -> dict[str, Any]:
    out = WORK / f"protected-{name}-{size}"
    shutil.rmtree(out, ignore_errors=True)
    prot = protect_dataset(loaded, data, out, ProtectConfig(holdout=0.2, seed=0, overwrite=True))
    report = verify(data, out, VerifyConfig(epochs=epochs, seed=0, defenses=defenses, stl=stl, res=size))
    row = report.to_dict()
    row["name"], row["max_linf"], row["psnr"] = name, prot.max_linf_255, prot.mean_psnr
    print(json.dumps({"name": name, "mean": row["mean"]}), flush=True)
    return row


def run_strength(suite: str, command: str, args: argparse.Namespace) -> None:
    size = 32 if suite == "quick" else 64
    # (name, method, bound): the paper's hard clamp first (it gets the defences and the STL row), then tanh.
    variants = [("TAP", "tap", "clamp"), ("TAP-tanh", "tap", "tanh")]
    if suite == "full":
        variants += [("EM", "em", "clamp"), ("SEP", "sep", "clamp"), ("EM-tanh", "em", "tanh"),
                     ("SEP-tanh", "sep", "tanh")]
    if args.variants:
        variants = [v for v in variants if v[0] in args.variants.split(",")]
    victim_epochs = args.victim_epochs or (15 if suite == "quick" else 30)
    data = DataConfig(root=UTK / "images", labels=UTK / "labels.csv", size=size)
    full = load_dataset(data)
    train_idx, _ = split_indices(full.records, 0.2, 0)
    train = full.subset(train_idx)
    rows: list[dict[str, Any]] = []
    fits: dict[str, Any] = {}
    for i, (name, method, bound) in enumerate(variants):
        out = WORK / f"gen-{method}-{bound}-{size}"
        if args.reuse and (out / "fit_record.json").is_file():  # a generator this script wrote before
            fits[name] = json.loads((out / "fit_record.json").read_text())["result"]
        else:
            shutil.rmtree(out, ignore_errors=True)
            cfg = FitConfig(method=method, image_size=size, batch_size=64, epochs=12 if suite == "quick" else 40,
                            surrogate_epochs=12 if suite == "quick" else 30, sep_every=2, device="auto", bound=bound)
            fits[name] = dataclasses.asdict(fit_generator(train, cfg, out))
        defenses = ("none", "grayscale", "jpeg10", "bdr2") if i == 0 else ("none",)
        rows.append(strength_row(f"MTL-UE-{name}", load_generator(str(out)), data, size, victim_epochs,
                                 defenses, stl=i == 0 and args.stl))
    tasks = full.spec.to_dict()
    rows.append(strength_row("class-wise patterns (no surrogate)", LoadedGenerator(
        ClasswisePatterns(tasks, size), "local", "patterns", WORK, None, "-", {}, None), data, size, victim_epochs, ("none",), False))
    if suite == "full":
        crop = default_crop(size)
        surrogate = MTLClassifier(full.spec.num_classes, image_size=crop)
        trainer = ClassifierTrainer(surrogate, full.spec.num_classes, milestones=(18, 24))
        train_classifier(trainer, train.images, train.labels, epochs=30, batch_size=64, crop=crop, gen=seed_everything(0))
        rows.append(strength_row("per-sample TAP (PGD)", LoadedGenerator(
            PerSampleTAP(tasks, size, trainer.model, crop), "local", "pgd", WORK, None, "-", {}, None),
            data, size, victim_epochs, ("none",), False))
    names = list(full.spec.names)
    first = rows[0]
    lines = [
        "## Protection strength (UTKFace, 3,000 images, seeded 80/20 split, MTL ResNet-18 victim)", "",
        f"Working size {size} px; victims: ImageNet-stem ResNet-18, {victim_epochs} epochs, per-sample crop + flip, "
        "trained on the protected PNG files as written, tested on the 600 clean held-out images. "
        f"Generators: {'quick' if suite == 'quick' else 'full'} settings (batch 64, 12 epochs at 32 px: about 450 "
        "steps against the paper's ~1,900). "
        "The paper's UTKFace MTL result is 78.97 -> 25.84 mean accuracy (140 px, 60 victim epochs); "
        "method-spec §14.4 measured 70.6-71.9 -> 23.9-24.9 at 64 px.", "",
        "| method | clean-trained mean | protected-trained mean | majority | " + " | ".join(f"{t} (clean -> prot.)" for t in names)
        + " | max L-inf | PSNR |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in rows:
        per_task = " | ".join(f"{t['clean_acc']:.1%} -> {t['protected_acc']:.1%}" for t in row["tasks"])
        lines.append(f"| {row['name']} | {row['mean']['clean_acc']:.1%} | **{row['mean']['protected_acc']:.1%}** | "
                     f"{row['mean']['majority']:.1%} | {per_task} | {row['max_linf']}/255 | {row['psnr']:.1f} dB |")
    lines += ["", f"ISS defences against {first['name']} (protected-trained mean accuracy):", "",
              "| defence | mean accuracy |", "|---|---|"]
    for d, acc in first["mean"]["by_defense"].items():
        lines.append(f"| {d} | {acc:.1%} |")
    stl = [t for t in first["tasks"] if t.get("stl_protected_acc") is not None]
    if stl:
        lines += ["", f"Single-task victims against {first['name']}:", "", "| task | STL clean | STL protected |", "|---|---|---|"]
        lines += [f"| {t['task']} | {t['stl_clean_acc']:.1%} | {t['stl_protected_acc']:.1%} |" for t in stl]
    lines += ["", "Generator training (surrogate accuracy on the training set, clean -> on x+δ):", "",
              "| method | epochs | seconds | clean | on x+δ |", "|---|---|---|---|---|"]
    for method, res in fits.items():
        clean = f"{np.mean(res['surrogate_clean_acc']):.1%}" if res.get("surrogate_clean_acc") else "-"
        lines.append(f"| {method} | {res['epochs_run']} | {res['seconds']:.0f} | {clean} | "
                     f"{np.mean(res['attacked_train_acc']):.1%} |")
    write_section("strength", "\n".join(lines), command)
    (WORK / f"strength-{suite}.json").write_text(json.dumps(rows, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")
    parser.add_argument("--only", choices=["speed", "strength", "protect"], default=None,
                        help="protect: the protect-speed step alone (its own RESULTS.md section)")
    parser.add_argument("--variants", default=None, help="comma list of strength variants, e.g. TAP,TAP-tanh")
    parser.add_argument("--victim-epochs", type=int, default=None)
    parser.add_argument("--stl", action=argparse.BooleanOptionalAction, default=True, help="single-task victims")
    parser.add_argument("--reuse", action="store_true", help="reuse generators already in benchmarks/_work")
    parser.add_argument("--before", default=None, metavar="REV",
                        help="with --only protect: also run protect as at git revision REV, in turn with the working tree")
    args = parser.parse_args()
    if not UTK.is_dir():
        sys.exit(f"UTKFace data not found at {UTK}")
    WORK.mkdir(exist_ok=True)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    if args.only in (None, "speed"):
        run_speed(args.suite, command)
    if args.only == "protect":
        run_protect_speed(command, args.before)
    if args.only in (None, "strength"):
        run_strength(args.suite, command, args)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
