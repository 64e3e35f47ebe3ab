"""Protection strength on UTKFace: fit -> protect -> verify, for one or more generator recipes.

    python benchmarks/strength.py --variant TAP:method=tap --res 64 --out benchmarks/_work/tap.json
    python benchmarks/strength.py --variant A:width=32,epochs=40 --variant B:width=64 --jobs 2

Each variant is `NAME:key=value,...` over FitConfig fields (on top of --recipe, default the CLI's CPU
recipe). The generator is fitted on the seeded 80% training split, `protect` writes every image of it
(the 20% holdout stays clean and never protected), and `verify` trains the MTL ResNet-18 victim on the
protected files as written, at each --res, with and without each squeeze, testing on the clean
holdout. One JSON per variant goes to --out-dir; `--markdown` renders them into RESULTS.md sections.

`--transfer` measures a generator on faces it never saw (what a pretrained generator is for): the
shared set is split in two seeded halves; the generator is fitted on half A, `protect` writes half B
(its 20% holdout stays clean), and the victims train on protected B and test on clean held-out B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
UTK = HERE.parent.parent / "shared" / "data" / "utkface"


def parse_value(text: str) -> Any:
    if text.lower() == "null":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "+" in text or text == "none" or text == "":
        return tuple(t for t in text.split("+") if t and t != "none")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key.strip()] = parse_value(value.strip())
        if key.strip() in ("robust", "unprotected") and isinstance(fields[key.strip()], str):
            fields[key.strip()] = (fields[key.strip()],)
    return name, fields


def run_variant(name: str, fields: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, args.threads))
    from mtlue_cli.config import DataConfig, FitConfig, ProtectConfig, VerifyConfig, make_config
    from mtlue_cli.recipes import FIT_RECIPES
    from mtlue_cli.data.dataset import held_out
    from mtlue_cli.data.labels import read_labels
    from mtlue_cli.fit.folder import fit_folder
    from mtlue_cli.models.persistence import load_generator
    from mtlue_cli.protect.protect import protect_dataset
    from mtlue_cli.verify.run import verify

    if args.surrogate_cache:
        _cache_surrogates(Path(args.surrogate_cache))
    work = Path(args.work) / name
    data_root = Path(args.data)
    recipe = FIT_RECIPES[args.recipe]
    cfg = make_config(FitConfig, recipe, device=args.device, **fields)
    # make_config skips None overrides (they mean "not given"); a variant's explicit null lifts the recipe's value.
    cfg = dataclasses.replace(cfg, **{k: None for k, v in fields.items() if v is None})
    gen_dir = work / "generator"
    data = DataConfig(root=data_root / "images", labels=data_root / "labels.csv")
    fit_data = data
    if args.transfer:
        fit_data, data = (dataclasses.replace(data, root=root, labels=labels)
                          for root, labels in halves(data_root, work))
    if args.generator:
        gen_dir, fit = Path(args.generator), json.loads((Path(args.generator) / "fit_record.json").read_text())["result"]
    elif args.reuse and (gen_dir / "fit_record.json").is_file():
        fit = json.loads((gen_dir / "fit_record.json").read_text())["result"]
    else:
        shutil.rmtree(gen_dir, ignore_errors=True)
        table = read_labels(fit_data)
        exclude = set() if args.transfer else held_out(table.records, 0.2, 0)  # protect's --holdout 0.2 --seed 0
        fit = dataclasses.asdict(fit_folder(fit_data, cfg, gen_dir, table=table, exclude=exclude,
                                            on_event=_epoch_log(name)).result)
        fit["out"] = str(fit["out"])
    record = {"name": name, "transfer": args.transfer, "fit": {k: v for k, v in fit.items() if k != "history"}, "history": fit.get("history", []),
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/strength.py " + " ".join(sys.argv[1:])}
    if args.fit_only:
        return _save(dict(record, generator=str(gen_dir)), Path(args.out_dir) / f"{name}.fit.json")
    loaded = load_generator(str(gen_dir), device=args.device if args.device != "auto" else "cpu")
    protected = work / "protected"
    shutil.rmtree(protected, ignore_errors=True)
    prot = protect_dataset(loaded, data, protected, ProtectConfig(holdout=0.2, seed=0, overwrite=True, device=args.device,
                                                                   workers=args.threads))
    rows = {}
    for res in args.res:
        # seed 0: the split protect left out (--holdout 0.2 --seed 0); the victims' own seeds apart from it.
        vcfg = VerifyConfig(epochs=args.victim_epochs, seed=0, defenses=tuple(args.defenses), res=res, device=args.device,
                            batch_size=128, time_budget=None, detect=args.detect, seeds=len(args.victim_seeds),
                            victim_seed=args.victim_seeds[0])
        report = verify(dataclasses.replace(data, size=res), protected, vcfg, on_event=_epoch_log(name))
        rows[str(res)] = report.to_dict()
        print(json.dumps({"variant": name, "res": res, "mean": rows[str(res)]["mean"]}), flush=True)
    return _save(dict(record, fields={k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
                      recipe=args.recipe, config=json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                      protect={"max_linf_255": prot.max_linf_255, "mean_psnr": prot.mean_psnr,
                               "mean_ssim": prot.mean_ssim, "seconds": prot.seconds},
                      verify=rows), Path(args.out_dir) / f"{name}.json")


def _epoch_log(name: str) -> Any:
    """Print each generator epoch's line (a long background fit is polled through its log)."""
    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "epoch":
            print(json.dumps({"variant": name, **{k: data[k] for k in ("epoch", "of", "loss", "attacked_acc", "seconds",
                                                                       "stage") if k in data}}), flush=True)
        elif kind == "victim":
            print(json.dumps({"variant": name, **data}), flush=True)
        elif kind == "end":
            print(f"[{name}] done: {data.get('stage')} ({time.strftime('%H:%M:%S')})", flush=True)
        elif kind == "log":
            print(f"[{name}] {data.get('message', data)}", flush=True)
    return on_event


def _cache_surrogates(folder: Path) -> None:
    """Benchmark-only: reuse a TAP/SEP surrogate trained by an earlier fit with the same data and surrogate recipe.
    The surrogate's training is seeded, so it is the same model; the RNG state it leaves behind is restored too,
    so the generator's batches, crops and squeezes are those of a fit that trained it (bit for bit on one machine)."""
    import hashlib

    import torch

    from mtlue_cli.fit import surrogate

    if getattr(surrogate, "_cached", False):
        return
    train = surrogate._train

    def cached(ctx: Any, cfg: Any, kind: str, checkpoints: bool) -> dict[str, dict]:
        h = hashlib.sha256(ctx.images.numpy().tobytes())
        h.update(ctx.labels.numpy().tobytes())
        fields = ("surrogate", "surrogate_stem", "surrogate_epochs", "surrogate_milestones", "sep_every", "crop",
                  "image_size", "batch_size", "seed") + (("robust",) if kind == "squeezed" else ())
        h.update(json.dumps([kind, checkpoints, ctx.crop, ctx.gen.get_state().tolist(),
                             [str(getattr(cfg, f)) for f in fields]]).encode())
        path = folder / f"{h.hexdigest()[:24]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            ctx.gen.set_state(saved["gen"])
            torch.set_rng_state(saved["torch_rng"])
            print(f"surrogate reused from {path}", flush=True)
            return saved["result"]
        result = train(ctx, cfg, kind, checkpoints)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"result": result, "gen": ctx.gen.get_state(), "torch_rng": torch.get_rng_state()}, path)
        return result

    surrogate._train, surrogate._cached = cached, True


def halves(data_root: Path, work: Path) -> list[tuple[Path, Path]]:
    """Split the set in two seeded halves, A (fit) and B (protect and verify), each its own folder of
    images (hard links where possible) and labels CSV, so neither run sees the other half's files."""
    import csv
    import hashlib

    with (data_root / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    parts: dict[str, list[list[str]]] = {"A": [], "B": []}
    for row in body:
        digest = hashlib.sha256(f"transfer:{row[0]}".encode()).digest()
        parts["A" if digest[0] < 128 else "B"].append(row)
    out = []
    for name, part in parts.items():
        images = work / f"images-{name}"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        for row in part:
            try:
                os.link(data_root / "images" / row[0], images / row[0])
            except OSError:
                shutil.copyfile(data_root / "images" / row[0], images / row[0])
        labels = work / f"labels-{name}.csv"
        with labels.open("w", newline="") as f:
            csv.writer(f).writerows([header, *part])
        out.append((images, labels))
    return out


def _save(record: dict[str, Any], path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return record


def machine() -> str:
    import torch

    from mtlue_cli import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, mtlue {__version__}")


def describe(result: dict[str, Any]) -> str:
    """The recipe a generator was fitted with, in one cell."""
    c = result["config"]
    squeezes = [x for x in c["robust"] if x != "identity"]
    eot = "no squeeze training" if not squeezes else "squeezes" + (
        f" (grayscale x{squeezes.count('grayscale')})" if squeezes.count("grayscale") > 1 else "")
    surrogate = ("" if not c.get("robust_surrogate") else
                 ", clean + squeeze-trained surrogates" if c.get("paired_surrogates") else ", squeeze-trained surrogate")
    return (f"{c['method'].upper()}, {c['image_size']} px, {c.get('stem', 'cifar')} stem, width {c['width']}, {c['bound']}, lr {c['lr']:g}, "
            f"batch {c['batch_size']}, {eot}{surrogate}")


def pm(values: list[float] | None, mean: float) -> str:
    """'24.1%' for one victim seed, '24.1 ± 1.3%' (sample sd) for several."""
    if not values or len(values) < 2:
        return f"{mean:.1%}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean * 100:.1f} ± {sd * 100:.1f}%"


def per_task(result: dict[str, Any], res: str) -> str:
    """Per-task table of one generator at one victim resolution (mean ± sd over the victim seeds)."""
    v = result["verify"][res]
    defenses = [d for d in v["defenses"] if d != "none"]
    lines = ["| task | majority | clean-trained | protected-trained | " + " | ".join(f"+ {d}" for d in defenses) + " |",
             "|---|---|---|---|" + "---|" * len(defenses)]
    for t in v["tasks"]:
        seeds = t.get("by_defense_seeds", {})
        lines.append(f"| {t['task']} | {t['majority']:.1%} | {pm(t.get('clean_by_defense_seeds', {}).get('none'), t['clean_acc'])} | "
                     f"**{pm(seeds.get('none'), t['by_defense']['none'])}** | "
                     + " | ".join(pm(seeds.get(d), t['by_defense'][d]) for d in defenses) + " |")
    m = v["mean"]
    seeds = m.get("by_defense_seeds", {})
    lines.append(f"| **mean** | {m['majority']:.1%} | {m['clean_acc']:.1%} | **{pm(seeds.get('none'), m['by_defense']['none'])}** | "
                 + " | ".join(pm(seeds.get(d), m['by_defense'][d]) for d in defenses) + " |")
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace the section `name` of RESULTS.md (between HTML comment markers), or append it."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n\n{body.strip()}\n\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def markdown(results: list[dict[str, Any]]) -> str:
    """One table: per variant and victim resolution, clean / protected mean and each squeeze."""
    defenses = [d for d in results[0]["verify"][next(iter(results[0]["verify"]))]["defenses"]]
    lines = ["| generator | recipe | fit | victim res | majority | clean-trained | " + " | ".join(
        "protected" if d == "none" else f"+ {d}" for d in defenses) + " | max L-inf | PSNR |",
        "|---|---|---|---|---|---|" + "---|" * len(defenses) + "---|---|"]
    for r in results:
        fit = r["fit"]
        fit_text = f"{fit['epochs_run']} ep, {fit['seconds']:.0f} s"
        for res, rep in r["verify"].items():
            m = rep["mean"]
            seeds = m.get("by_defense_seeds", {})
            cells = " | ".join(f"**{pm(seeds.get(d), m['by_defense'][d])}**" if d == "none" else pm(seeds.get(d), m['by_defense'][d])
                               for d in defenses)
            lines.append(f"| {r['name']} | {describe(r)} | {fit_text} | {res} px | {m['majority']:.1%} | {m['clean_acc']:.1%} | {cells} | "
                         f"{r['protect']['max_linf_255']}/255 | {r['protect']['mean_psnr']:.1f} dB |")
    return "\n".join(lines)


def victim_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; verify seeds its victims from a first seed upwards, so they must be consecutive."""
    seeds = [int(t) for t in text.split(",") if t.strip()]
    if not seeds or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise argparse.ArgumentTypeError(f"{text!r}: give consecutive seeds, e.g. 0,1,2")
    return seeds


def informed(results: list[dict[str, Any]], res: str = "64") -> str:
    """Issue 29's table: one row per generator and task (and the mean), a column per defence (mean ± sd over the
    victim seeds), and the linear probe's held-out accuracy on the protected images vs the originals."""
    first = results[0]["verify"][res]
    defenses = first["defenses"]
    lines = ["| generator | task | majority | " + " | ".join("none" if d == "none" else d for d in defenses)
             + " | probe prot. / clean |", "|---|---|---|" + "---|" * len(defenses) + "---|"]
    for r in results:
        v = r["verify"][res]
        probes = {t["task"]: t for t in (v.get("detect") or {}).get("tasks", [])}
        for t in v["tasks"]:
            seeds = t.get("by_defense_seeds", {})
            cells = " | ".join(pm(seeds.get(d), t["by_defense"][d]) for d in defenses)
            pr = probes.get(t["task"])
            probe_cell = f"{pr['protected']['acc']:.0%} / {pr['clean']['acc']:.0%}" if pr else "—"
            lines.append(f"| {r['name']} | {t['task']} | {t['majority']:.1%} | {cells} | {probe_cell} |")
        m = v["mean"]
        seeds = m.get("by_defense_seeds", {})
        cells = " | ".join(f"**{pm(seeds.get(d), m['by_defense'][d])}**" for d in defenses)
        lines.append(f"| {r['name']} | **mean** | {m['majority']:.1%} | {cells} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help="NAME:field=value,... (FitConfig fields)")
    parser.add_argument("--recipe", default="cpu", help="FIT_RECIPES entry the variant fields override")
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--res", type=int, nargs="+", default=[64], help="victim resolutions")
    parser.add_argument("--victim-epochs", type=int, default=15)
    parser.add_argument("--victim-seeds", type=victim_seeds, default=[0],
                        help="victim seeds, consecutive (e.g. 0,1,2): victims per defence on the same split (the split's "
                             "seed stays 0); tables show mean ± sd")
    parser.add_argument("--defenses", nargs="+", default=["none", "grayscale", "jpeg10", "bdr2"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--generator", default=None, help="verify this generator folder instead of fitting one")
    parser.add_argument("--reuse", action="store_true", help="reuse a generator this script fitted before")
    parser.add_argument("--transfer", action="store_true",
                        help="fit on one seeded half of the set, protect and verify on the other half")
    parser.add_argument("--fit-only", action="store_true", help="fit (and time) the generator, verify nothing")
    parser.add_argument("--detect", action="store_true", help="also the linear-probe detectability (verify --detect)")
    parser.add_argument("--surrogate-cache", default=None,
                        help="folder of surrogates trained by earlier fits, reused when data and surrogate recipe match")
    parser.add_argument("--jobs", type=int, default=1, help="variants run in parallel processes")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per variant")
    parser.add_argument("--work", default=str(HERE / "_work" / "strength"))
    parser.add_argument("--out-dir", default=str(HERE / "_work" / "strength-json"))
    parser.add_argument("--markdown", nargs="*", default=None, help="render these JSON files as a table and exit")
    parser.add_argument("--informed", action="store_true", help="with --markdown: issue 29's per-task table")
    args = parser.parse_args()
    if args.markdown is not None:
        loaded = [json.loads(Path(p).read_text()) for p in args.markdown]
        print(informed(loaded) if args.informed else markdown(loaded))
        return
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    if args.jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_variant, n, f, args) for n, f in variants]
            results = [f.result() for f in futures]
    else:
        results = [run_variant(n, f, args) for n, f in variants]
    if not args.fit_only:
        print(markdown(results))


if __name__ == "__main__":
    main()
