"""Issue 29: how much of a generator's δ is a class template (what a per-class linear classifier, and so orthogonal
projection and the linear probe, find) and how much is a flat colour offset per image, on faces of the shared set.

    python benchmarks/template_share.py faces-utkface /path/to/generator --images 512

For each generator, on the first `--images` faces of the shared UTKFace labels: mean (δ/ε)² (δ's energy), the
class-mean penalty of `fit.losses.class_mean_penalty` (the class template's energy, mean over tasks), its share of
the energy, and the energy of each image's per-channel spatial mean (a flat colour offset).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
UTK = HERE.parent.parent / "shared" / "data" / "utkface"


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from mtlue_cli.fit.losses import class_mean_penalty
    from mtlue_cli.models.persistence import load_generator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generators", nargs="+", help="folders or aliases, as --generator takes them")
    parser.add_argument("--data", default=str(UTK))
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    with open(Path(args.data) / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:args.images + 1]
    for source in args.generators:
        g = load_generator(source).model.eval()
        size, names = g.image_size, list(g.tasks)
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(Path(args.data) / "images" / r[0]).convert("RGB").resize(
            (size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255).permute(2, 0, 1) for r in rows])
        # labels.csv holds class indices; a generator's class names are those indices as text
        y = torch.tensor([[g.tasks[n].index(r[header.index(n)]) if r[header.index(n)] in g.tasks[n]
                           else int(r[header.index(n)]) for n in names] for r in rows])
        with torch.no_grad():
            d = g(x, y)
        energy = float(((d / g.epsilon) ** 2).mean())
        template = float(class_mean_penalty(d, y, g.num_classes, g.epsilon))
        flat = float(((d / g.epsilon).mean((2, 3)) ** 2).mean())
        print(json.dumps({"generator": source, "images": len(rows), "energy": round(energy, 3),
                          "class_template": round(template, 3), "template_share": round(template / energy, 3),
                          "flat_offset": round(flat, 3)}))


if __name__ == "__main__":
    main()
