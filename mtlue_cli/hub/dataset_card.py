"""The dataset card of a published protected folder: Hub front matter, then plain words for the people
who download it (what was done to the images, how it was measured, what weakens it)."""

from __future__ import annotations

import json
import math
from typing import Any

from mtlue_cli.errors import FileProblem
from mtlue_cli.metrics import format_score
from mtlue_cli.verify.verdict import broken_text

MANIFEST_COPY, RUN_COPY, VERIFY_COPY = "mtlue-manifest.jsonl", "mtlue-run.json", "mtlue-verify.json"
IMAGE_MAPS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")  # label-map files `datasets` decodes as images


def _size_category(n: int) -> str:
    for limit, name in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10**7 else "10M<n<100M"


def _categories(tasks: list[str], dense: dict[str, str]) -> list[str]:
    """The Hub task categories: classification for class columns, each label-map kind's own."""
    named = {"segmentation": "image-segmentation", "depth": "depth-estimation", "normals": "image-to-image"}
    found = (["image-classification"] if any(t not in dense for t in tasks) else []) + [named[k] for k in dense.values()]
    return list(dict.fromkeys(found))


def _generator_line(gen: dict[str, Any]) -> str:
    where = {"hub": f"`{gen.get('spec')}` on the Hugging Face Hub", "alias": f"pretrained alias `{gen.get('spec')}`"}
    text = where.get(gen.get("source") or "", "a local generator folder (not published with this dataset)")
    return (f"{text}, revision `{gen.get('revision') or '-'}`, weights sha256 `{gen.get('sha256') or '-'}`, "
            f"base method {str(gen.get('method') or 'unknown').upper()}, working size {gen.get('image_size')} px")


def _verify_section(verify: dict[str, Any] | None) -> list[str]:
    if verify is None:
        return ["Not verified. The owner can measure the protection with `mtlue verify OUT` on the folder `mtlue protect` "
                "wrote (it saves OUT/verify.json), then publish again: the result then appears here."]
    extra = [d for d in verify.get("defenses", []) if d != "none"]
    recipe = verify.get("recipe") or {}
    lines = [f"`mtlue verify` trained the same victim ({recipe.get('victim', '?')}, {recipe.get('epochs', '?')} epochs at "
             f"{recipe.get('res', '?')} px) once on the originals and once on these protected files, and tested both on "
             f"{verify.get('test_images', '?')} clean images neither had seen ({recipe.get('metric', 'acc')}, lower is "
             "better for the owner):", "",
             "| task | majority class | trained on originals | trained on protected | "
             + "".join(f"protected, after {d} | " for d in extra),
             "|---|---|---|---|" + "---|" * len(extra)]
    for row in verify.get("tasks", []):
        by = row.get("by_defense") or {}
        m = row.get("metric")  # a label map's score (mIoU, depth error, angle); its baseline is the no-skill map
        name = row["task"] if m in (None, "accuracy") else f"{row['task']} ({m}, no-skill baseline)"
        lines.append(f"| {name} | {format_score(row['majority'], m)} | {format_score(row['clean_acc'], m)} | "
                     f"{format_score(row['protected_acc'], m)} | "
                     + "".join(f"{format_score(by[d], m)} | " if d in by else "- | " for d in extra))
    threshold = verify.get("threshold", 5)
    if verify.get("effective"):
        lines += ["", f"Verdict: **effective**: every task within {threshold:g} points of the majority class "
                  "(or of a uniform guess over its classes, where that is higher)"
                  + (f", also after {', '.join(extra)}." if extra else ".")]
    elif verify.get("verdict") == "inconclusive":
        lines += ["", f"Verdict: **none**: the victim trained on the originals did not learn {', '.join(verify.get('unlearned') or [])} "
                  "either, so low scores from the protected files prove nothing there."]
    else:
        broken = broken_text(verify.get("broken_by") or {})
        lines += ["", f"Verdict: **not effective**: above the majority class (or a uniform guess, where higher) + {threshold:g} points for {broken or '?'}."]
    return lines


def dataset_card(run: dict[str, Any], tasks: list[str], rows: list[list[str]], entries: dict[str, dict[str, Any]],
                 test_rows: list[list[str]], verify: dict[str, Any] | None, license: str, repo_id: str | None,
                 failed: list[FileProblem], dense: dict[str, str] | None = None) -> str:
    """README.md for the dataset repo: front matter for the Hub, then plain words for downloaders. `dense`: the
    label-map tasks and their kinds (their maps are published unchanged beside the images)."""
    dense = dense or {}
    gen = run.get("generator") or {}
    method = str(gen.get("method") or "unknown")
    eps = float(run.get("epsilon") or 0)
    linfs = [int(e["linf_255"]) for e in entries.values()]
    psnrs = [e["psnr"] for e in entries.values() if isinstance(e.get("psnr"), (int, float)) and math.isfinite(e["psnr"])]
    ssims = [e["ssim"] for e in entries.values() if isinstance(e.get("ssim"), (int, float))]
    config = run.get("config") or {}
    tagged = str(config.get("tag_no_ai")).lower() == "true"
    summary = run.get("summary") or {}
    splits = [{"split": "train", "path": "train/**"}] + ([{"split": "test", "path": "test/**"}] if test_rows else [])
    name = repo_id.split("/")[-1] if repo_id else "MTL-UE protected image dataset"
    front = {
        "license": license, "pretty_name": name, "task_categories": _categories(tasks, dense),
        "tags": ["unlearnable-examples", "mtl-ue", "data-protection", "mtlue", f"mtl-ue-{method}"],
        "size_categories": [_size_category(len(rows) + len(test_rows))],
        "configs": [{"config_name": "default", "data_files": splits}],
    }
    lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in front.items()] + ["---", "", f"# {name}", "",
        "**These images are protected against training.** Each one carries a small perturbation (at most "
        f"{eps * 255:.4g}/255 per pixel value) keyed to its labels, made with "
        "[mtlue](https://github.com/mtlue/mtlue) (MTL-UE, Yu et al., ICML 2025, "
        "[arXiv 2505.05279](https://arxiv.org/abs/2505.05279)). People see the same pictures; a model trained on them "
        "learns the perturbation as a shortcut instead of the real features, and does poorly on real images.", ""]
    if tagged:
        lines += ["Each protected file also carries the IPTC/PLUS XMP field `DataMining: DMI-PROHIBITED-AIMLTRAINING`: "
                  "the owner prohibits AI/ML training on it.", ""]
    lines += ["## Contents", "",
              f"- `train/`: {len(rows)} protected images ({config.get('format', 'png')}) and `train/metadata.csv` with "
              f"`file_name` and one column per task, classes as the owner wrote them:"]
    for k, task in enumerate(tasks):
        if task in dense:
            as_image = all(r[k + 1].lower().endswith(IMAGE_MAPS) for r in rows)
            lines.append(f"  - `{task}`: a {dense[task]} label map per image, published unchanged (the protection "
                         "perturbs the images only) under `train/maps/`; "
                         + ("the column loads as an `Image`." if as_image else "a .npy array with no image form: the "
                            "column holds its path under `train/`, load it with `numpy.load`."))
            continue
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[k + 1]] = counts.get(row[k + 1], 0) + 1
        lines.append(f"  - `{task}`: " + ", ".join(f"`{c}` ({n})" for c, n in sorted(counts.items())))
    if test_rows:
        lines.append(f"- `test/`: {len(test_rows)} **unprotected original images** the owner held out as a clean test "
                     "split (decoded upright, saved as lossless PNG without metadata). They are NOT protected.")
    lines += [f"- `{MANIFEST_COPY}`: one line per image: source name, measured L-inf, PSNR, SSIM, sha256 of the "
              "original and of the protected file.", f"- `{RUN_COPY}`: the settings of the protect run."]
    if verify is not None:
        lines.append(f"- `{VERIFY_COPY}`: the full `mtlue verify` report.")
    if failed:
        lines.append(f"- {len(failed)} image(s) failed in protect and are not included (status `failed` in the manifest).")
    lines += ["", "```python", "from datasets import load_dataset", "",
              f"ds = load_dataset({json.dumps(repo_id or 'ORG/NAME')})", "```", "",
              "Class columns whose values all look like numbers load as integers.", "",
              "## How it was protected", "",
              f"- Tool: mtlue {run.get('version', '?')}",
              f"- Generator: {_generator_line(gen)}",
              f"- Budget ε (L-inf): {eps * 255:.4g}/255 ({eps:.6f})",
              f"- Measured on the files as written: max |δ| {max(linfs)}/255, smallest per-file max |δ| {min(linfs)}/255 "
              "(no file is unchanged)",
              f"- Mean PSNR {sum(psnrs) / len(psnrs):.2f} dB, mean SSIM {sum(ssims) / len(ssims):.4f}"
              if psnrs and ssims else "- PSNR / SSIM: not recorded",
              f"- Images: {len(rows)} protected" + (f", {summary.get('held_out')} held out" if summary.get("held_out") else ""),
              f"- No-AI tag (`--tag-no-ai`): {'yes' if tagged else 'no'}"]
    if summary.get("unprotected_tasks"):
        lines.append(f"- Tasks NOT protected (left learnable): {', '.join(summary['unprotected_tasks'])}")
    lines += ["", "## Measured protection", "", *_verify_section(verify), "",
              "## Limits", "",
              "- Protection is measured, not guaranteed. Known to weaken it: JPEG re-compression, bit-depth reduction, "
              "adversarial training, diffusion purification, and mixing in clean copies of the same images.",
              "- The perturbation is keyed to the labels: it protects these images with these labels.", ""]
    return "\n".join(lines)
