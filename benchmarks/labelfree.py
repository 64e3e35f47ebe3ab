"""Protection without labels (issue 30), measured against an attacker who has the true labels.

    python benchmarks/labelfree.py clusters --victim-seeds 0,1 --out benchmarks/results/labelfree-clusters.json
    python benchmarks/labelfree.py predicted --victim-seeds 0,1 --out benchmarks/results/labelfree-predicted.json
    python benchmarks/labelfree.py purity --out benchmarks/results/labelfree-purity.json
    python benchmarks/labelfree.py --markdown benchmarks/results/labelfree-*.json

`clusters`: the shared UTKFace split, read as a folder of unlabelled images (`--layout unlabelled`: the tool
never sees a label). `fit` clusters the 80% training split into k-means pseudo-tasks and fits the generator on
them; `protect` labels every image with the generator's labeller; the victims train on the protected files with
the TRUE age / race / gender labels and are tested on the clean 20% holdout.

`predicted`: the face generator on faces it never saw. The set is split in the seeded halves A and B of
`strength.py --transfer`; a generator (true labels) and a labeller (`fit.pseudo.train_labeller`) are fitted on A;
B is protected twice, once with its true labels and once with no labels (the labeller predicts them); the same
true-label victims train on each.

`purity`: how far k-means clusters of the images follow the true labels, on two kinds of features the tool can
compute offline: the principal components `fit` clusters today, and a small CNN trained self-supervised on the set
(SimCLR: two random crops, flips, colour jitter and grayscale of each image; NT-Xent, temperature 0.2). Purity is
the share of images whose cluster's most common true class is their own (the majority class's share when the
clusters carry nothing); the linear probe (trained on 80%, tested on 20%) says what the features hold at all.
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
    from mtlue_cli.config import FitConfig, make_config
    from mtlue_cli.recipes import FIT_RECIPES
    from mtlue_cli.fit.folder import fit_folder

    cfg = make_config(FitConfig, FIT_RECIPES["cpu"], device="cpu", epochs=args.epochs, clusters=tuple(args.clusters))
    cfg = dataclasses.replace(cfg, time_budget=None)  # a fixed number of epochs: a busy machine cannot shorten them
    if args.reuse and (gen_dir / "fit_record.json").is_file():  # a generator this script fitted before
        record = json.loads((gen_dir / "fit_record.json").read_text())
        return {"epochs_run": record["result"]["epochs_run"], "seconds": record["result"]["seconds"],
                "clusters": record.get("clusters"), "image_size": cfg.image_size, "method": cfg.method, "reused": True}
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


def _simclr(images: Any, size: int, epochs: int, width: int = 16, seed: int = 0) -> Any:
    """(N, 8*width) features of a `models.labeller` CNN trained with SimCLR on uint8 images (N, 3, S, S)."""
    import math

    import torch
    import torch.nn.functional as F

    from mtlue_cli.models.labeller import _cnn

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    side = images.shape[-1]

    def view(x: Any) -> Any:
        x = x.float().div(255)
        crops = []
        for one in x:
            s = max(8, int(side * math.sqrt(float(torch.empty(1).uniform_(0.35, 1.0, generator=gen)))))
            t, l = (int(torch.randint(0, side - s + 1, (1,), generator=gen)) for _ in range(2))
            c = F.interpolate(one[None, :, t:t + s, l:l + s], size=(size, size), mode="bilinear", antialias=True)
            crops.append(c.flip(-1) if torch.rand(1, generator=gen) < 0.5 else c)
        x = torch.cat(crops)
        b = len(x)
        jitter = lambda: torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=gen)  # noqa: E731
        x = x * jitter()
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * jitter() + m
        g = x.mean(1, keepdim=True)
        x = (x - g) * jitter() + g
        gray = (torch.rand(b, 1, 1, 1, generator=gen) < 0.2).float()
        return (gray * x.mean(1, keepdim=True) + (1 - gray) * x).clamp(0, 1)

    net = _cnn(3, width)
    head = torch.nn.Sequential(torch.nn.Linear(8 * width, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=2e-3, weight_decay=1e-4)
    batch = 256
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * (len(images) // batch))
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            z = F.normalize(head(net(torch.cat([view(images[idx]), view(images[idx])]))), dim=1)
            sim = (z @ z.T / 0.2).fill_diagonal_(-1e9)
            loss = F.cross_entropy(sim, torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return torch.cat([net(F.interpolate(images[i:i + 512].float().div(255), size=(size, size), mode="bilinear",
                                            antialias=True)) for i in range(0, len(images), 512)])


def run_purity(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.fit.pseudo import cluster_labeller, kmeans

    data = load_dataset(DataConfig(root=Path(args.data) / "images", labels=Path(args.data) / "labels.csv", size=64))
    y, n = data.labels, len(data)
    pca = cluster_labeller(data.images, (2,))
    started = time.perf_counter()
    ssl = _simclr(data.images, 32, args.ssl_epochs)
    ssl_seconds = time.perf_counter() - started
    features = {"pixels (principal components, what fit uses)": pca.embed(data.images.float().div(255)).detach(),
                f"self-supervised CNN (SimCLR, {args.ssl_epochs} epochs, {ssl_seconds:.0f} s)": ssl}
    split = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    train, test = split[:int(0.8 * n)], split[int(0.8 * n):]
    out: dict[str, Any] = {"majority": {t: float(torch.bincount(y[:, k]).max()) / n for k, t in enumerate(data.spec.names)},
                           "features": {}}
    for name, f in features.items():
        f = (f - f.mean(0)) / f.std(0).clamp(min=1e-6)
        row: dict[str, Any] = {"purity": {}, "probe": {}}
        for k in args.purity_k:
            assign = torch.cdist(f, kmeans(f, k, torch.Generator().manual_seed(0))).argmin(1)
            row["purity"][str(k)] = {t: sum(int(torch.bincount(y[assign == j, c]).max()) for j in range(k)
                                            if (assign == j).any()) / n for c, t in enumerate(data.spec.names)}
        for c, t in enumerate(data.spec.names):
            probe = torch.nn.Linear(f.shape[1], len(data.spec.classes[c]))
            opt = torch.optim.LBFGS(probe.parameters(), max_iter=200)

            def closure() -> Any:
                opt.zero_grad()
                loss = F.cross_entropy(probe(f[train]), y[train, c]) + 1e-3 * probe.weight.square().sum()
                loss.backward()
                return loss
            opt.step(closure)
            row["probe"][t] = float((probe(f[test]).argmax(1) == y[test, c]).float().mean())
        out["features"][name] = row
    return out


def purity_markdown(r: dict[str, Any]) -> str:
    ks = list(next(iter(r["features"].values()))["purity"])
    lines = [f"### purity: `{r['command']}`\n\n{r['machine']}; {r['date']}. All 3,000 faces: how far k-means clusters "
             "follow the true labels (purity: the share of images whose cluster's commonest class is their own; the "
             "majority class's share when the clusters carry nothing), and what a linear probe of the same features "
             "reaches (trained on 80%, tested on 20%).\n",
             "| features | task | majority | " + " | ".join(f"purity K={k}" for k in ks) + " | linear probe |",
             "|---|---|---|" + "---|" * len(ks) + "---|"]
    for name, row in r["features"].items():
        for t, maj in r["majority"].items():
            lines.append(f"| {name} | {t} | {maj:.1%} | " + " | ".join(f"{row['purity'][k][t]:.1%}" for k in ks)
                         + f" | {row['probe'][t]:.1%} |")
    return "\n".join(lines)


def markdown(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        if r["mode"] == "purity":
            parts.append(purity_markdown(r))
            continue
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
    parser.add_argument("mode", nargs="?", choices=("clusters", "predicted", "purity"))
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--epochs", type=int, default=30, help="generator epochs (the CPU recipe's ~30 in 19 min)")
    parser.add_argument("--clusters", type=lambda t: [int(v) for v in t.split(",")], default=[2, 5, 10])
    parser.add_argument("--labeller-epochs", type=int, default=30)
    parser.add_argument("--ssl-epochs", type=int, default=30, help="purity: SimCLR epochs")
    parser.add_argument("--purity-k", type=lambda t: [int(v) for v in t.split(",")], default=[2, 5, 10, 20])
    parser.add_argument("--victim-epochs", type=int, default=15)
    parser.add_argument("--victim-seeds", type=victim_seeds, default=[0, 1])
    parser.add_argument("--defenses", nargs="+", default=["none", "grayscale", "jpeg10", "bdr2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(HERE / "_work" / "labelfree"))
    parser.add_argument("--reuse", action="store_true", help="reuse the generator this script fitted before in --work")
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
    record.update({"clusters": run_clusters, "predicted": run_predicted, "purity": run_purity}[args.mode](args))
    out = Path(args.out or HERE / "_work" / f"labelfree-{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"written {out}; mean none: " + ", ".join(f"{k} {v['mean']['by_defense']['none']:.1%}"
                                                     for k, v in record.get("verify", {}).items()), flush=True)


if __name__ == "__main__":
    main()
