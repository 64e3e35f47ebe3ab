"""Issue 29, the hypothesis behind the informed-attacker variants, tested without a generator: do hand-made
class-wise textures survive orthogonal projection when each image gets its own random placement?

    python benchmarks/informed_codes.py --variants fixed,shifted --defenses none op ueraser-lite \
        --out benchmarks/results/informed/codes.json

Each class of each task gets a random ±1 texture tile (`--tile` px at 64 px, equal on R, G and B so that grayscale
and channel shuffle leave it alone); an image's δ is ε times the mean over its tasks of its classes' tiles,
tiled over the image, computed at 64 px and resized to the file's size (as `protect` resizes δ). `fixed`: every
image's tiles start at the same place, so a class's δ has a class mean that a linear classifier finds and OP
projects out. `shifted`: each image's tile of each task starts at a random offset, so the class mean of δ is
flat (what `FitConfig.decorrelate="shift"` asks of the generator), while a CNN, which slides its filters over
the image, can still read the texture. The protected files (the seeded 80% of the shared split that `protect
--holdout 0.2 --seed 0` keeps) are written with a manifest as `protect` writes them, and `verify` trains the
same victims as `strength.py` on them, testing on the clean 20%.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from strength import UTK, _epoch_log, informed, machine, victim_seeds, write_section  # noqa: E402


def codes(num_classes: list[int], tile: int, seed: int, cell: int = 1) -> list[Any]:
    """One (C_k, tile, tile) ±1 texture per class of each task, drawn on a grid of `cell`-px squares (1: per
    pixel; larger: a smoother, lower-frequency texture that a strided stem does not average away)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    side = -(-tile // cell)
    return [(torch.randint(0, 2, (c, side, side), generator=gen).float() * 2 - 1)
            .repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :tile, :tile] for c in num_classes]


def delta64(tiles: list[Any], labels: list[int], offsets: list[tuple[int, int]], size: int = 64,
            weights: list[float] | None = None) -> Any:
    """(size, size) δ in units of ε: the weighted mean over tasks (equal weights by default) of each task's class
    tile, tiled and rolled by its offset."""
    import torch

    weights = weights or [1.0] * len(tiles)
    total = torch.zeros(size, size)
    for t, y, (dy, dx), w in zip(tiles, labels, offsets, weights):
        p = t.shape[-1]
        reps = -(-size // p) + 1
        plane = t[y].repeat(reps, reps)
        total += w * plane[dy:dy + size, dx:dx + size]
    return total / sum(weights)


def seen_by_victim(data: Any, table: Any, args: argparse.Namespace, images: int = 50) -> dict:
    """What of the code reaches a 64-px victim: each image written as `write_protected` writes it (fixed placement)
    and the original, both resized to 64 px as the victim's loader resizes files (PIL bilinear, antialiased); the
    difference's mean |δ| in /255 and its correlation with the code. Rules out a texture lost on the way."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    tiles = codes(table.spec.num_classes, args.tile, args.seed, args.cell)
    amp, corr = [], []
    for r in table.records[:images]:
        d = delta64(tiles, list(r.labels), [(0, 0)] * len(tiles), weights=args.weights)
        img = np.asarray(Image.open(Path(data.root) / r.path).convert("RGB"), dtype=np.float32) / 255
        up = F.interpolate(d[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
        x = np.clip(np.round((img + up[..., None] * args.epsilon / 255) * 255), 0, 255).astype(np.uint8)
        small = [np.asarray(Image.fromarray(a).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
                 for a in (x, np.round(img * 255).astype(np.uint8))]
        seen = (small[0] - small[1]).mean(-1)
        amp.append(float(np.abs(seen).mean()))
        corr.append(float(np.corrcoef(seen.ravel(), d.numpy().ravel())[0, 1]))
    return {"images": len(amp), "mean_abs_255": float(np.mean(amp)), "corr_with_code": float(np.mean(corr)),
            "epsilon_255": args.epsilon, "tile": args.tile, "cell": args.cell}


def write_protected(data: Any, table: Any, test: set[str], out: Path, variant: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tiles = codes(table.spec.num_classes, args.tile, args.seed, args.cell)
    gen = torch.Generator().manual_seed(args.seed + 1)
    eps = args.epsilon / 255
    manifest, rows, linf = [], [], 0
    with open(data.labels, newline="") as f:
        header = ["path"] + next(csv.reader(f))[1:]  # the column protect writes
    for r in table.records:
        if r.path in test:
            continue
        offsets = [tuple(int(v) for v in torch.randint(0, args.tile, (2,), generator=gen)) if variant == "shifted"
                   else (0, 0) for _ in tiles]
        d = delta64(tiles, list(r.labels), offsets, weights=args.weights)[None, None]  # (1, 1, 64, 64)
        img = np.asarray(Image.open(Path(data.root) / r.path).convert("RGB"), dtype=np.float32) / 255
        h, w = img.shape[:2]
        d = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy() * eps
        x = np.clip(np.round((img + d[..., None]) * 255), 0, 255).astype(np.uint8)
        linf = max(linf, int(np.abs(x.astype(int) - np.round(img * 255).astype(int)).max()))
        name = str(Path(r.path).with_suffix(".png"))
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(out / name)
        manifest.append({"source": r.path, "output": name, "status": "ok", "linf_255": None})
        rows.append([name] + [str(v) for v in r.labels])
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in manifest))
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    return {"images": len(rows), "max_linf_255": linf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--variants", default="fixed,shifted")
    parser.add_argument("--tile", type=int, default=8, help="texture period at 64 px")
    parser.add_argument("--cell", type=int, default=1, help="±1 squares of this many px at 64 px (1: per pixel)")
    parser.add_argument("--epsilon", type=float, default=8.0, help="L-inf budget in /255")
    parser.add_argument("--weights", type=lambda t: [float(v) for v in t.split(",")], default=None,
                        help="each task's share of ε, e.g. 0,0,1: all of it for the third task (default: equal)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victim-epochs", type=int, default=8)
    parser.add_argument("--victim-seeds", type=victim_seeds, default=[0])
    parser.add_argument("--defenses", nargs="+", default=["none", "op", "ueraser-lite"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=str(HERE / "_work" / "informed-codes"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", nargs="*", default=None, help="render these JSON files into RESULTS.md")
    parser.add_argument("--check", action="store_true",
                        help="only print what of the code a 64-px victim's loader sees (mean |δ|, correlation)")
    args = parser.parse_args()
    if args.markdown is not None:
        results = [r for p in args.markdown for r in json.loads(Path(p).read_text())["results"]]
        first = json.loads(Path(args.markdown[0]).read_text())
        write_section("informed-codes", "## Informed attacker (issue 29): hand-made class textures, fixed or shifted\n\n"
                      f"`{first['command']}`\n\n{first['machine']}; {first['date']}. No generator: see the script's "
                      "docstring. Victims as in the screen above (64 px, 8 epochs); `--detect` = the linear probe.\n\n"
                      + informed(results))
        return
    import torch

    from mtlue_cli.config import DataConfig, VerifyConfig
    from mtlue_cli.data.dataset import held_out
    from mtlue_cli.data.labels import read_labels
    from mtlue_cli.verify.run import verify

    torch.set_num_threads(args.threads)
    data = DataConfig(root=Path(args.data) / "images", labels=Path(args.data) / "labels.csv")
    table = read_labels(data)
    if args.check:
        print(json.dumps(seen_by_victim(data, table, args)))
        return
    test = held_out(table.records, 0.2, 0)
    record: dict[str, Any] = {"command": "python benchmarks/informed_codes.py " + " ".join(sys.argv[1:]),
                              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "results": []}
    for variant in args.variants.split(","):
        folder = Path(args.work) / variant
        written = write_protected(data, table, test, folder, variant, args)
        vcfg = VerifyConfig(epochs=args.victim_epochs, seed=0, defenses=tuple(args.defenses), res=64, device="cpu",
                            batch_size=128, time_budget=None, seeds=len(args.victim_seeds),
                            victim_seed=args.victim_seeds[0], detect=True)
        rep = verify(dataclasses.replace(data, size=64), folder, vcfg, on_event=_epoch_log(variant)).to_dict()
        tag = ("" if not args.weights else "-w" + ":".join(f"{w:g}" for w in args.weights)) + (
            f"-t{args.tile}c{args.cell}" if args.cell > 1 else "")
        record["results"].append({"name": f"code-{variant}{tag}", "protect": written, "verify": {"64": rep},
                                  "fit": {"epochs_run": 0, "seconds": 0}})
        out = Path(args.out or HERE / "_work" / "informed-codes.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=str))
        print(f"[{variant}] mean none {rep['mean']['by_defense']['none']:.1%}", flush=True)


if __name__ == "__main__":
    main()
