"""The robustness profile of a protected folder: every defence `verify` knows, in one table (issue 16).

    python benchmarks/robustness.py PROTECTED --res 64 --time-budget 45m

PROTECTED is a folder written by `mtlue protect --holdout` (on the shared UTKFace split: the one
`strength.py` writes for a variant, e.g. `--work W --variant in64:...` leaves `W/in64/protected`). It
runs `mtlue verify PROTECTED --defense all --profile --detect --plot` through the library: per defence a
victim trained on the protected files and one trained on the originals (the defence's cost to clean
data), both tested on the clean holdout; the linear-probe detectability check; the learning curves.
Writes the JSON report and the plot to benchmarks/results/, and the table to RESULTS.md (section
`robustness-<cpu|gpu>`) with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run import machine  # noqa: E402
from strength import write_section  # noqa: E402

from mtlue_cli.cli.options import parse_duration  # noqa: E402
from mtlue_cli.config import VerifyConfig  # noqa: E402
from mtlue_cli.verify.run import VerifyRequest, verify_folder  # noqa: E402

WHAT = {  # what each defence does to the victim's images, in the table's words (defenses.py)
    "none": "trained on the files as written",
    "grayscale": "luma only, train and test",
    "jpeg10": "JPEG quality 10, training images",
    "bdr2": "2-bit depth, training images",
    "blur1": "Gaussian blur σ 1 px, train and test",
    "median3": "3x3 median, train and test",
    "resize2": "down 2x and back up, train and test",
    "op": "orthogonal projection of the per-task linear directions",
    "ueraser-lite": "heavy augmentation in the training loop",
}


def table(report: dict) -> str:
    none_clean = next(p["clean_mean"] for p in report["profile"] if p["defense"] == "none")
    majority = report["mean"]["majority"]
    lines = ["| defence | what it does | clean-trained | clean cost | protected-trained | verdict |",
             "|---|---|---|---|---|---|"]
    for p in report["profile"]:
        cost = f"{100 * (none_clean - p['clean_mean']):+.1f}" if p["clean_mean"] is not None else "-"
        verdict = "holds" if not p["broken"] else f"broken ({', '.join(p['broken'])})"
        clean = f"{100 * p['clean_mean']:.1f}%" if p["clean_mean"] is not None else "-"
        lines.append(f"| {p['defense']} | {WHAT.get(p['defense'], '')} | {clean} | {cost} | "
                     f"**{100 * p['protected_mean']:.1f}%** | {verdict} |")
    per_task = ["| task | majority | " + " | ".join(report["defenses"]) + " |",
                "|---|---|" + "---|" * len(report["defenses"])]
    for t in report["tasks"]:
        per_task.append(f"| {t['task']} | {100 * t['majority']:.1f}% | "
                        + " | ".join(f"{100 * t['by_defense'][d]:.1f}%" for d in report["defenses"]) + " |")
    return (f"Means over the tasks; majority baseline {100 * majority:.1f}%. \"clean cost\" is what the defence takes "
            "from a victim trained on the originals (points, against no defence): a defence that costs clean data as "
            "much as protected data gives the attacker nothing.\n\n" + "\n".join(lines)
            + "\n\nProtected-trained victim per task:\n\n" + "\n".join(per_task))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protected", type=Path)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15, help="at most; the time budget may plan fewer")
    parser.add_argument("--time-budget", default="45m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="robustness", help="file stem under benchmarks/results/")
    args = parser.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    plot = results / f"{args.name}.png"
    cfg = VerifyConfig(epochs=args.epochs, res=args.res, defenses=("all",), profile=True, detect=True, plot=plot,
                       time_budget=None if args.time_budget == "none" else parse_duration(args.time_budget), device=args.device, batch_size=64)
    started = time.time()
    report = verify_folder(VerifyRequest(args.protected), cfg)
    data = report.to_dict()
    (results / f"{args.name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    command = "python benchmarks/" + Path(sys.argv[0]).name + " " + " ".join(sys.argv[1:])
    detect = report.detect
    body = [f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.time() - started) / 60:.0f} min)",
            f"Machine: {machine()}",
            f"Victims: {report.recipe['victim']} ({report.recipe['stem']} stem), {report.recipe['epochs']} epochs at "
            f"{report.recipe['res']} px, {report.train_images} protected training images, {report.test_images} clean "
            "test images (the holdout `protect` left out); one victim per defence trained on the protected files and "
            "one on the originals.",
            table(data)]
    if detect is not None:
        body.append(f"Detectability (`--detect`, linear probes on the raw pixels): {detect.summary}.\n\n"
                    + "\n".join(f"- {row.task}: {row.reading}" for row in detect.tasks))
    if report.plot:
        body.append(f"Learning curves: `benchmarks/results/{plot.name}`.")
    body.append("Verdict: " + ("effective under every defence" if report.effective else
                               "NOT effective: broken " + "; ".join(f"{d}: {', '.join(t)}" for d, t in report.broken_by.items())))
    write_section(f"robustness-{'gpu' if report.recipe['device'].startswith('cuda') else 'cpu'}",
                  "## Robustness profile of the default generator (issue 16)\n\n" + "\n\n".join(body))
    if report.plot and Path(report.plot) != plot:
        shutil.copy(report.plot, plot)


if __name__ == "__main__":
    main()
