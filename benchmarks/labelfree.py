"""Protection without labels (issue 30), measured against an attacker who has the true labels.

    python benchmarks/labelfree.py clusters --victim-seeds 0,1 --out benchmarks/results/labelfree-clusters.json
    python benchmarks/labelfree.py predicted --victim-seeds 0,1 --out benchmarks/results/labelfree-predicted.json
    python benchmarks/labelfree.py --markdown benchmarks/results/labelfree-*.json

`clusters`: the shared UTKFace split, read as a folder of unlabelled images (`--layout unlabelled`: the tool
never sees a label). `fit` clusters the 80% training split into k-means pseudo-tasks and fits the generator on
them; `protect` labels every image with the generator's labeller; the victims train on the protected files with
the TRUE age / race / gender labels and are tested on the clean 20% holdout.

`predicted`: the face generator on faces it never saw. The set is split in the seeded halves A and B of
`strength.py --transfer`; a generator (true labels) and a labeller (`fit.pseudo.train_labeller`) are fitted on A;
B is protected twice, once with its true labels and once with no labels (the labeller predicts them); the same
true-label victims train on each.
"""

from __future__ import annotations

import argparse
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

from strength import (  # noqa: E402
    UTK,
    _epoch_log,
    halves,
    machine,
    per_task,
    victim_seeds,
    write_section,
)


def _verify(data: Any, protected: Path, args: argparse.Namespace, name: str) -> dict[str, Any]:
    from mtlue_cli.config import VerifyConfig
    from mtlue_cli.verify.run import verify

    vcfg = VerifyConfig(epochs=args.victim_epochs, seed=0, defenses=tuple(args.defenses), res=64, device="cpu",
                        batch_size=128, time_budget=None, seeds=len(args.victim_seeds), victim_seed=args.victim_seeds[0])
    return verify(dataclasses.replace(data, size=64), protected, vcfg, on_event=_epoch_log(name)).to_dict()


def _protect(loaded: Any, data: Any, out: Path) -> dict[str, Any]:
    from mtlue_cli.config import ProtectConfig
    from mtlue_cli.protect.protect import protect_dataset

    shutil.rmtree(out, ignore_errors=True)
    report = protect_dataset(loaded, data, out, ProtectConfig(holdout=0.2, seed=0, overwrite=True, device="cpu"))
    return {"max_linf_255": report.max_linf_255, "mean_psnr": report.mean_psnr, "seconds": report.seconds,
            "predicted_tasks": report.predicted_tasks}


def _fit(data: Any, gen_dir: Path, args: argparse.Namespace, exclude: set[str], name: str) -> dict[str, Any]:
    from mtlue_cli.config import FIT_RECIPES, FitConfig, make_config
    from mtlue_cli.fit.folder import fit_folder

    cfg = make_config(FitConfig, FIT_RECIPES["cpu"], device="cpu", epochs=args.epochs, clusters=tuple(args.clusters))
    cfg = dataclasses.replace(cfg, time_budget=None)  # a fixed number of epochs: a busy machine cannot shorten them
    shutil.rmtree(gen_dir, ignore_errors=True)
    report = fit_folder(data, cfg, gen_dir, on_event=_epoch_log(name), exclude=exclude)
    return {"epochs_run": report.result.epochs_run, "seconds": report.result.seconds, "clusters": report.clusters,
            "image_size": cfg.image_size, "method": cfg.method}


def run_clusters(args: argparse.Namespace) -> dict[str, Any]:
    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import held_out
    from mtlue_cli.data.labels import read_labels
    from mtlue_cli.models.persistence import load_generator

    work = Path(args.work) / "clusters"
    unlabelled = DataConfig(root=Path(args.data) / "images", layout="unlabelled")
    truth = DataConfig(root=Path(args.data) / "images", labels=Path(args.data) / "labels.csv")
    exclude = held_out(read_labels(unlabelled).records, 0.2, 0)  # protect's --holdout 0.2 --seed 0
    fit = _fit(unlabelled, work / "generator", args, exclude, "clusters")
    protect = _protect(load_generator(str(work / "generator")), unlabelled, work / "protected")
    return {"fit": fit, "protect": protect, "verify": {"pseudo-labels": _verify(truth, work / "protected", args, "clusters")}}


def run_predicted(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.fit.pseudo import predict, train_labeller
    from mtlue_cli.models.persistence import load_generator, save_labeller

    work = Path(args.work) / "predicted"
    (a_images, a_labels), (b_images, b_labels) = halves(Path(args.data), work)
    a, b = DataConfig(root=a_images, labels=a_labels), DataConfig(root=b_images, labels=b_labels)
    gen_dir = work / "generator"
    fit = _fit(a, gen_dir, args, set(), "predicted")
    started = time.perf_counter()
    labeller = train_labeller(load_dataset(dataclasses.replace(a, size=64)), epochs=args.labeller_epochs,
                              on_event=_epoch_log("labeller"))
    seconds = time.perf_counter() - started
    save_labeller(labeller, gen_dir)
    b_set = load_dataset(dataclasses.replace(b, size=64))
    guessed = predict(labeller, b_set.images)
    accuracy = {t: float((guessed[:, k] == b_set.labels[:, k]).float().mean()) for k, t in enumerate(b_set.spec.names)}
    majority = {t: float(torch.bincount(b_set.labels[:, k]).max()) / len(b_set) for k, t in enumerate(b_set.spec.names)}
    loaded = load_generator(str(gen_dir))
    out: dict[str, Any] = {"fit": fit, "labeller": {"seconds": seconds, "epochs": args.labeller_epochs,
                                                    "params": sum(p.numel() for p in labeller.parameters()),
                                                    "accuracy_on_B": accuracy, "majority_on_B": majority}}
    out["protect"], out["verify"] = {}, {}
    for name, data in (("true labels", b), ("predicted labels", dataclasses.replace(b, labels=None, layout="unlabelled"))):
        folder = work / name.replace(" ", "-")
        out["protect"][name] = _protect(loaded, data, folder)
        out["verify"][name] = _verify(b, folder, args, name)
    return out


def markdown(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        head = f"### {r['mode']}: `{r['command']}`\n\n{r['machine']}; {r['date']}. Fit: {r['fit']['method'].upper()}, " \
               f"{r['fit']['image_size']} px, {r['fit']['epochs_run']} epochs, {r['fit']['seconds']:.0f} s."
        if r.get("labeller"):
            lab = r["labeller"]
            head += (f" Labeller: {lab['params']:,} parameters, {lab['epochs']} epochs, {lab['seconds']:.0f} s; its accuracy "
                     "on half B: " + ", ".join(f"{t} {v:.1%} (majority {lab['majority_on_B'][t]:.1%})"
                                                for t, v in lab["accuracy_on_B"].items()) + ".")
        if r["fit"].get("clusters"):
            head += " Pseudo-tasks (members per cluster): " + "; ".join(
                f"{t}: {', '.join(map(str, c))}" for t, c in r["fit"]["clusters"].items()) + "."
        parts.append(head)
        for name, rep in r["verify"].items():
            parts.append(f"**protected with {name}** (victims with the true labels, mean ± sd over "
                         f"{len(rep['mean'].get('by_defense_seeds', {}).get('none', [0]))} seeds):\n\n"
                         + per_task({"verify": {"64": rep}}, "64"))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("clusters", "predicted"))
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--epochs", type=int, default=30, help="generator epochs (the CPU recipe's ~30 in 19 min)")
    parser.add_argument("--clusters", type=lambda t: [int(v) for v in t.split(",")], default=[2, 5, 10])
    parser.add_argument("--labeller-epochs", type=int, default=30)
    parser.add_argument("--victim-epochs", type=int, default=15)
    parser.add_argument("--victim-seeds", type=victim_seeds, default=[0, 1])
    parser.add_argument("--defenses", nargs="+", default=["none", "grayscale", "jpeg10", "bdr2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(HERE / "_work" / "labelfree"))
    parser.add_argument("--out", default=None, help="JSON to write")
    parser.add_argument("--markdown", nargs="*", default=None, help="render these JSON files into RESULTS.md")
    args = parser.parse_args()
    if args.markdown is not None:
        records = [json.loads(Path(p).read_text()) for p in args.markdown]
        write_section("labelfree", "## Protection without labels (issue 30)\n\n" + markdown(records))
        return
    import torch

    torch.set_num_threads(max(1, args.threads))
    record = {"mode": args.mode, "command": "python benchmarks/labelfree.py " + " ".join(sys.argv[1:]),
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    record.update(run_clusters(args) if args.mode == "clusters" else run_predicted(args))
    out = Path(args.out or HERE / "_work" / f"labelfree-{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"written {out}; mean none: " + ", ".join(f"{k} {v['mean']['by_defense']['none']:.1%}"
                                                     for k, v in record["verify"].items()), flush=True)


if __name__ == "__main__":
    main()
