"""The model card (README.md with Hub front matter) of a generator folder, from its config, metadata and record.

Its own module so that hub (which writes a card with every saved generator) and export (which rewrites it
with a verify result) both import it and neither imports the other for it.
"""

from __future__ import annotations

import json
from typing import Any


def model_card(config: dict[str, Any], metadata: dict[str, str], record: dict[str, Any] | None,
               verify_report: dict[str, Any] | None = None, labeller: dict[str, Any] | None = None) -> str:
    """README.md with Hub front matter: what the generator protects, how it was made, and its limits.

    A pretrained generator's record may carry a `card` mapping (title, license, license_name,
    license_text, training_data, results, intended_use: markdown strings) that fills in the sections
    only its maker can write (its training data and licence, measured transfer)."""
    tasks = config["tasks"]
    method = metadata.get("base_method") or "unknown"
    eps = config["epsilon"]
    card = dict((record or {}).get("card") or {})
    front = {
        "library_name": "mtlue", "license": card.get("license", "other"),
        **({"license_name": card["license_name"]} if card.get("license_name") else {}), "pipeline_tag": "image-to-image",
        "tags": ["unlearnable-examples", "mtl-ue", "data-protection", "model_hub_mixin", f"mtl-ue-{method}"],
        "mtlue": {"epsilon": eps, "epsilon_255": round(eps * 255, 4), "image_size": config["image_size"],
                  "base_method": method, "tasks": tasks},
    }
    lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in front.items()] + ["---", ""]
    lines += [
        f"# {card.get('title', 'MTL-UE perturbation generator')}", "",
        "A generator that adds an imperceptible, label-conditioned perturbation to images so that models "
        "trained on them learn shortcuts instead of the real features (MTL-UE, Yu et al., ICML 2025, "
        "[arXiv 2505.05279](https://arxiv.org/abs/2505.05279)). Made with "
        "[mtlue](https://github.com/mtlue/mtlue).", "",
        "## Use", "", "```bash", "pip install mtlue",
        "mtlue protect ./photos --labels labels.csv --generator THIS_REPO_OR_FOLDER --out ./photos-protected --holdout 0.2",
        "mtlue verify ./photos-protected   # victims trained on the protected copies, tested on the held-out originals",
        "```", "",
        "## What it protects", "",
        f"- L-inf budget: {eps:.6f} ({eps * 255:.4g}/255), applied at native resolution, lossless PNG by default.",
        f"- Working resolution: {config['image_size']} px ({config['stem']} stem); base objective: {method.upper()}.",
        "- Tasks and classes (the labels of your images must use this vocabulary; where the names are not "
        "numbers, the class index in brackets works too):", "",
    ]
    dense = config.get("task_kinds") or {}
    for name, classes in tasks.items():
        numeric = any(c.lstrip("-").isdigit() for c in classes)
        kind = f"a {dense[name]} map" + (": " if classes else "") if name in dense else ""
        lines.append(f"  - `{name}`: {kind}" + ", ".join(f"`{c}`" if numeric else f"`{c}` ({i})" for i, c in enumerate(classes)))
    if labeller is None:
        lines += ["", "A CSV with only some of the tasks works too: the missing ones are then not protected."]
    elif labeller.get("kind") == "clusters":
        lines += ["", "These tasks are k-means clusters of the training images, not labels: it was fitted on photos "
                  "without labels. `protect` puts new photos in the clusters with the labeller beside it "
                  "(`labeller.safetensors`), so no labels file is needed."]
    else:
        lines += ["", "Photos without labels, or a CSV with only some of the tasks: `protect` predicts the missing "
                  "labels with the small classifier beside it (`labeller.safetensors`), says so and records them in "
                  "`predicted_labels.csv`; `--no-predict-labels` leaves those tasks unprotected instead."]
        if card.get("labeller"):
            lines += ["", card["labeller"]]
    if config.get("unprotected"):
        lines += ["", f"- Left learnable on purpose: {', '.join(config['unprotected'])}."]
    if card.get("training_data"):
        lines += ["", "## Training data", "", card["training_data"]]
    if card.get("results"):
        lines += ["", "## Measured protection", "", card["results"]]
    lines += ["", "## How it was trained", ""]
    if record:
        cfg, ds, res = record.get("config", {}), record.get("dataset", {}), record.get("result", {})
        lines += [
            f"- {ds.get('images', '?')} images ({ds.get('layout', '?')} layout), fingerprint `{str(ds.get('fingerprint', ''))[:16]}`",
            f"- {res.get('epochs_run', '?')} generator epochs, batch {cfg.get('batch_size')}, seed {cfg.get('seed')}, "
            f"surrogate {cfg.get('surrogate')} ({cfg.get('surrogate_epochs')} epochs), "
            f"lambda_intra {cfg.get('lambda_intra')}, lambda_inter {cfg.get('lambda_inter')}",
            f"- mtlue {record.get('version')}, torch {record.get('torch')}, device {record.get('device')}, {record.get('created')}",
        ]
    else:
        lines += ["- No training record was saved with this generator."]
    if verify_report:
        lines += ["", "## Measured protection (`mtlue verify`)", "",
                  "| task | clean-trained acc | protected-trained acc | majority baseline |", "|---|---|---|---|"]
        for row in verify_report.get("tasks", []):
            m = row.get("metric")  # a label map's score (mIoU, depth error, angle) and its no-skill baseline, as is
            lines.append(f"| {row['task']}{'' if m in (None, 'accuracy') else f' ({m})'} | {_cell(row['clean_acc'], m)} | "
                         f"{_cell(row['protected_acc'], m)} | {_cell(row['majority'], m)} |")
        lines += ["", f"Recipe: {verify_report.get('recipe', {})}"]
    lines += [
        "", "## Intended use and limits", "",
        *([card["intended_use"]] if card.get("intended_use") else []),
        "- For dataset owners protecting their own images before publishing them.",
        "- Protection is measured, not guaranteed: always run `mtlue verify` on your own written files.",
        "- Known to weaken it: JPEG re-compression (ISS JPEG-10), bit-depth reduction, adversarial training, "
        "diffusion purification, and training on a mix of protected and clean copies of the same images.",
        "- Labels must stay attached: the perturbation is keyed to each image's labels.",
    ]
    if card.get("license_text"):
        lines += ["", "## Licence", "", card["license_text"]]
    lines += [""]
    return "\n".join(lines)


def _cell(value: float, metric: str | None) -> str:
    """A verify figure: a percentage for accuracy, a label map's own value (mIoU, depth error, angle) otherwise.
    (The card imports nothing from the package, so not `metrics.format_score`.)"""
    return f"{value:.1%}" if metric in (None, "accuracy") else f"{value:.3g}"
