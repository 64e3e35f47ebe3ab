"""Build the bundled `faces-utkface` generator: fit on the shared UTKFace set (or take a generator already
fitted on it), name its classes, write its model card (with the transfer result measured by
`strength.py --transfer`) and its registry entry.

    python benchmarks/faces.py --epochs 30                            # fit on all 3,000 (CPU default recipe)
    python benchmarks/faces.py --from GEN --transfer benchmarks/results/transfer.json   # ship GEN
    python benchmarks/faces.py --labeller          # train and ship the labeller for faces without labels (~2 min)

The bundled one is the generator `strength.py --transfer` fitted on half A of the set (1,454 images), so the
transfer table in its card is its own measurement on faces it never saw (half B).

The fit reads the shared labels.csv (UTKFace's class indices); the shipped generator's vocabulary is
the readable names of those indices (`UTK_CLASS_NAMES`, same order), so a user's CSV may use either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
UTK = HERE.parent.parent / "shared" / "data" / "utkface"
ALIAS = "faces-utkface"
PRETRAINED = HERE.parent / "pretrained"

LICENSE_TEXT = (
    "The weights were trained on UTKFace (Zhang, Song and Qi, CVPR 2017), which its authors make available "
    "**for non-commercial research purposes only**; the copyright of its images belongs to their owners. "
    "These weights inherit that restriction: use them for non-commercial research only. The mtlue code "
    "itself is under its own licence; this restriction is about these weights.")
TRAINING_DATA = (
    "{images:,} UTKFace face crops (200x200 px) of the shared benchmark subset, with three tasks: "
    "`age` in the paper's 9 bins, `race` (5 classes, as UTKFace defines them) and `gender` (2). "
    "The faces are aligned and cropped; photos that are not face crops are outside what it was trained on.")
INTENDED_USE = (
    "- Protecting face photos labelled with some or all of age bin, race and gender before publishing them, "
    "when fitting your own generator (`mtlue protect` without `--generator`) is too slow or your set is too "
    "small to fit one.")


def fit(args: argparse.Namespace) -> Path:
    import torch

    from mtlue_cli.config import DataConfig
    from mtlue_cli.fit.folder import fit_config, fit_folder

    torch.set_num_threads(args.threads)
    _, cfg = fit_config("auto", device=args.device, time_budget=args.time_budget)
    if args.epochs:  # a fixed count: the same generator however busy the machine is
        cfg = dataclasses.replace(cfg, epochs=args.epochs, time_budget=None)
    data = DataConfig(root=Path(args.data) / "images", labels=Path(args.data) / "labels.csv")
    work = Path(args.work)
    fit_folder(data, cfg, work, replace=True)
    return work


def results_markdown(transfer: dict[str, Any], same: bool) -> str:
    """The transfer table of `strength.py --transfer` as the card's results section."""
    from strength import per_task

    res = next(iter(transfer["verify"]))
    fit = transfer["fit"]
    who = ("this generator, fitted on one seeded half of the shared set" if same else
           "a generator fitted the same way on one half of the shared set")
    return (
        f"On faces it never saw: {who} ({fit['epochs_run']} epochs, {fit['seconds'] / 60:.0f} min on a 2-core CPU), "
        "protected the other half; "
        f"an MTL ResNet-18 victim trained on those protected files ({res} px, 15 epochs) was tested on clean "
        "held-out faces of that half, beside a victim trained on the clean files and the majority-class baseline. "
        "`+ grayscale` etc.: the attacker applies that squeeze to the files before training.\n\n"
        + per_task(transfer, res)
        + f"\n\nMeasured with `{transfer['command']}` on {transfer['machine']} ({transfer['date']}). "
        "One seed; victims vary by a few points between runs. " + _weak_spots(transfer, res))


def _weak_spots(transfer: dict[str, Any], res: str) -> str:
    """The squeezes after which a task ends above the verdict's threshold (verify's own `broken_by`), said plainly."""
    v = transfer["verify"][res]
    failed = {(task, d) for d, tasks in v["broken_by"].items() for task in tasks}
    broken = [f"`{t['task']}` {'with no defence' if d == 'none' else 'after ' + d} ({t['by_defense'][d]:.0%}; majority {t['majority']:.0%}, clean {t['clean_acc']:.0%})"
              for t in v["tasks"] for d in t["by_defense"] if (t["task"], d) in failed]
    if not broken:
        return f"Every task stays within {v['threshold']:g} points of its majority class with no defence and after each squeeze."
    return ("**Not every task holds under every squeeze**: " + "; ".join(broken) + ". Publish knowing that an "
            "attacker who converts the images first learns these; fitting a generator on your own images is stronger.")


def publish(work: Path, args: argparse.Namespace) -> None:
    from mtlue_cli.data.labels import UTK_CLASS_NAMES
    from mtlue_cli.files import file_sha256
    from mtlue_cli.models.generator import PerturbationGenerator
    from mtlue_cli.models.persistence import generator_config, load_folder, save_generator

    model, _, meta = load_folder(work)
    config = generator_config(model)
    if {k: len(v) for k, v in config["tasks"].items()} != {k: len(v) for k, v in UTK_CLASS_NAMES.items()}:
        raise SystemExit(f"{work}: tasks {config['tasks']} are not UTKFace's")
    # Same weights, readable class names in the same index order (the fit read UTKFace's indices).
    named = PerturbationGenerator(**{**config, "tasks": {k: list(v) for k, v in UTK_CLASS_NAMES.items()}})
    named.load_state_dict(model.state_dict())
    record = json.loads((work / "fit_record.json").read_text())
    card: dict[str, Any] = {"title": "MTL-UE generator for face photos (UTKFace: age, race, gender)",
                            "license": "other", "license_name": "utkface-non-commercial-research",
                            "license_text": LICENSE_TEXT, "intended_use": INTENDED_USE,
                            "training_data": TRAINING_DATA.format(images=record["dataset"]["images"])}
    if args.transfer:
        transfer = json.loads(Path(args.transfer).read_text())
        same = transfer["fit"]["seconds"] == record["result"]["seconds"]  # the measured generator is this one
        card["results"] = results_markdown(transfer, same)
    record["card"] = card
    out = PRETRAINED / ALIAS
    save_generator(named, out, meta.get("base_method") or None, record)
    path = PRETRAINED / "registry.json"
    registry = json.loads(path.read_text())
    registry["aliases"][ALIAS] = {"repo_id": f"mtlue/{ALIAS}", "revision": None, "sha256": file_sha256(out / "model.safetensors"),
                                  "image_size": config["image_size"], "tasks": named.tasks, "bundled": ALIAS}
    path.write_text(json.dumps(registry, indent=2) + "\n")
    print(f"wrote {out} and the registry entry {ALIAS!r}")


def labeller_card(out: Path) -> None:
    """The card's paragraph on the labeller, from fit_record.json's "labeller" entry and, when it exists,
    `labelfree.py predicted`'s measure of protection with predicted labels."""
    from mtlue_cli.files import write_text
    from mtlue_cli.models.card import model_card
    from mtlue_cli.models.persistence import LABELLER_WEIGHTS, load_folder, load_labeller

    model, _, meta = load_folder(out)
    record = json.loads((out / "fit_record.json").read_text())
    lab = record["labeller"]
    text = (f"The labeller (`labeller.safetensors`, {lab['params']:,} parameters, "
            f"{(out / LABELLER_WEIGHTS).stat().st_size / 1e6:.1f} MB) was trained on {lab['images']:,} of these faces "
            f"and predicts, on the {lab['test_images']} held out: " + ", ".join(
                f"`{t}` {a:.0%} right (majority class {lab['majority'][t]:.0%})" for t, a in lab["accuracy"].items()) + ".")
    measured = HERE / "results" / "labelfree-predicted.json"
    if measured.is_file():
        runs = json.loads(measured.read_text())["verify"]
        mean = {k: v["mean"]["by_defense"]["none"] for k, v in runs.items()}
        clean = next(iter(runs.values()))["mean"]["clean_acc"]
        text += (f" **Predicted labels protect far less than true ones**: on faces neither had seen, victims trained with "
                 f"the true labels averaged {mean['predicted labels']:.1%} when the labels were predicted, "
                 f"{mean['true labels']:.1%} when they were given, {clean:.1%} from the originals "
                 "(`benchmarks/RESULTS.md`, \"Protection without labels\"). Give the labels you have.")
    record["card"]["labeller"] = text
    (out / "fit_record.json").write_text(json.dumps(record, indent=2) + "\n")
    write_text(out / "README.md", model_card(model.config, meta, record, labeller=load_labeller(out).config))


def ship_labeller(args: argparse.Namespace) -> None:
    """Train the labeller `protect` uses on faces without labels (issue 30): a small CNN on the seeded 80% of the
    shared set that `protect --holdout 0.2 --seed 0` keeps, measured on the other 20%; written beside the bundled
    generator, pinned in the registry, and described in its card."""
    import time

    import torch

    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import held_out, load_dataset
    from mtlue_cli.data.labels import UTK_CLASS_NAMES
    from mtlue_cli.files import file_sha256
    from mtlue_cli.fit.pseudo import predict, train_labeller
    from mtlue_cli.models.persistence import LABELLER_WEIGHTS, save_labeller
    from strength import machine

    torch.set_num_threads(args.threads)
    data = load_dataset(DataConfig(root=Path(args.data) / "images", labels=Path(args.data) / "labels.csv", size=64))
    test = held_out(data.records, 0.2, 0)
    train_idx = [i for i, r in enumerate(data.records) if r.path not in test]
    test_idx = [i for i, r in enumerate(data.records) if r.path in test]
    for name, classes in zip(data.spec.names, data.spec.classes):  # the CSV's indices, in UTK_CLASS_NAMES' order
        if list(classes) != [str(i) for i in range(len(UTK_CLASS_NAMES[name]))]:
            raise SystemExit(f"task {name}: classes {classes} are not UTKFace's indices")
    started = time.perf_counter()
    labeller = train_labeller(data.subset(train_idx), epochs=args.labeller_epochs, seed=0)
    seconds = time.perf_counter() - started
    labeller.tasks = {k: list(v) for k, v in UTK_CLASS_NAMES.items()}
    held = data.subset(test_idx)
    guessed = predict(labeller, held.images)
    accuracy = {t: float((guessed[:, k] == held.labels[:, k]).float().mean()) for k, t in enumerate(held.spec.names)}
    majority = {t: float(torch.bincount(held.labels[:, k]).max()) / len(held) for k, t in enumerate(held.spec.names)}
    out = PRETRAINED / ALIAS
    save_labeller(labeller, out)
    record = json.loads((out / "fit_record.json").read_text())
    record["labeller"] = {"images": len(train_idx), "test_images": len(test_idx), "epochs": args.labeller_epochs,
                          "seconds": round(seconds, 1), "params": sum(p.numel() for p in labeller.parameters()),
                          "accuracy": accuracy, "majority": majority, "machine": machine(),
                          "command": "python benchmarks/faces.py --labeller " + " ".join(sys.argv[2:]),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "fit_record.json").write_text(json.dumps(record, indent=2) + "\n")
    labeller_card(out)
    path = PRETRAINED / "registry.json"
    registry = json.loads(path.read_text())
    registry["aliases"][ALIAS]["labeller_sha256"] = file_sha256(out / LABELLER_WEIGHTS)
    path.write_text(json.dumps(registry, indent=2) + "\n")
    print(json.dumps(record["labeller"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--work", default=str(HERE / "_work" / "faces-generator"), help="where the fit writes")
    parser.add_argument("--time-budget", type=float, default=2100, help="fit budget in seconds")
    parser.add_argument("--epochs", type=int, default=None, help="fixed generator epochs instead of the budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transfer", default=None, help="strength.py --transfer JSON for the card's results")
    parser.add_argument("--from", dest="source", default=None, help="ship this fitted generator folder instead of fitting")
    parser.add_argument("--labeller", action="store_true", help="train and ship the labeller beside the bundled generator")
    parser.add_argument("--labeller-epochs", type=int, default=30)
    parser.add_argument("--labeller-card", action="store_true", help="rewrite the card's labeller paragraph only")
    args = parser.parse_args()
    if args.labeller:
        return ship_labeller(args)
    if args.labeller_card:
        return labeller_card(PRETRAINED / ALIAS)
    work = Path(args.source) if args.source else fit(args)
    publish(work, args)


if __name__ == "__main__":
    main()
