"""The built-in demos: the synthetic set of `shapes` (class labels), protected with the bundled `demo-shapes`
generator, or with `dense` the synthetic `scenes` (segmentation, depth and normal maps beside an object count,
issue 28) with the bundled `demo-scenes` generator; each verified end to end on the CPU. No download, no data of
the user's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlue_cli.config import DataConfig, ProtectConfig, VerifyConfig
from mtlue_cli.demo.scenes import make_scenes
from mtlue_cli.demo.shapes import make_shapes
from mtlue_cli.events import OnEvent, log, noop

DEMO_ALIAS = "demo-shapes"


@dataclass(frozen=True)
class DemoSet:
    """One demo: its synthetic set, bundled generator and victim recipe."""

    generator: str
    images: int
    epochs: int
    batch_size: int
    defenses: tuple[str, ...]


DEMOS = {
    "shapes": DemoSet(DEMO_ALIAS, 800, 12, 64, ("none", "grayscale", "jpeg10", "bdr2")),
    # A dense victim's step costs ~10x a classifier's at 32 px: the set, the batch and one protected victim (no
    # squeeze) keep the demo within ~4 minutes on 2 CPU cores (issue 28); `mtlue verify OUT/protected` measures the
    # squeezes too, and benchmarks/RESULTS.md has them.
    "scenes": DemoSet("demo-scenes", 600, 12, 32, ("none",)),
}


def _write(kind: str, data_dir: Path, n: int, seed: int) -> None:
    if kind == "shapes":
        make_shapes(data_dir, n=n, seed=seed)
    else:  # other scenes than the bundled generator was fitted on (benchmarks/dense.py: seed 0): new images
        make_scenes(data_dir, n=n, seed=seed + 1)


def _data(kind: str, data_dir: Path) -> DataConfig:
    """How the set is read: its labels.csv, and the scenes' label maps (depth in millimetre PNGs)."""
    if kind == "shapes":
        return DataConfig(root=data_dir / "images", labels=data_dir / "labels.csv")
    return DataConfig(root=data_dir / "images", labels=data_dir / "labels.csv", depth_scale=1000,
                      maps=(f"seg=segmentation:{data_dir / 'segmentation'}", f"depth=depth:{data_dir / 'depth'}",
                            f"normals=normals:{data_dir / 'normals'}"))


@dataclass
class DemoReport:
    data: Path
    protected: Path
    protect: Any  # ProtectReport
    verify: Any  # VerifyReport
    generator: str


def run_demo(out: Path, generator: str | None = None, images: int | None = None, epochs: int | None = None,
             device: str = "auto", seed: int = 0, plot: bool = True, on_event: OnEvent | None = None,
             kind: str = "shapes") -> DemoReport:
    """Make the synthetic set of `kind` ("shapes" or "scenes"), protect it with the shipped generator (80/20
    holdout), verify it; with `plot`, the victims' learning curves go to OUT/curves.png (when matplotlib is
    installed; else the report says so). Left None, `generator`, `images` and `epochs` are the demo's own."""
    from mtlue_cli.models.persistence import load_generator
    from mtlue_cli.protect.protect import protect_dataset
    from mtlue_cli.verify.run import verify

    on_event = on_event or noop
    demo = DEMOS[kind]
    generator, images, epochs = generator or demo.generator, images or demo.images, epochs or demo.epochs
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "labels.csv").is_file():  # written last by both: its presence means the set is complete
        log(on_event, f"writing {images} synthetic {kind} to {data_dir / 'images'}")
        _write(kind, data_dir, images, seed)
    data = _data(kind, data_dir)
    protected = out / "protected"
    protect_cfg = ProtectConfig(holdout=0.2, seed=seed, device=device, overwrite=True, preview=6)
    protect_report = protect_dataset(load_generator(generator), data, protected, protect_cfg, on_event)
    # A fixed epoch count, not verify's time budget: the demo's verdict must not depend on how busy the machine is.
    verify_cfg = VerifyConfig(epochs=epochs, seed=seed, device=device, batch_size=demo.batch_size, time_budget=None,
                              defenses=demo.defenses, plot=out / "curves.png" if plot else None)
    verify_report = verify(data, protected, verify_cfg, on_event=on_event)
    return DemoReport(data_dir, protected, protect_report, verify_report, generator)
