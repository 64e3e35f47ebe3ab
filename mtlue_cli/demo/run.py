"""The built-in demo: the synthetic set of `shapes`, protected with the bundled `demo-shapes` generator and
verified end to end on the CPU. No download, no data of the user's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlue_cli.config import DataConfig, ProtectConfig, VerifyConfig
from mtlue_cli.demo.shapes import make_shapes
from mtlue_cli.events import OnEvent, log, noop

DEMO_ALIAS = "demo-shapes"


@dataclass
class DemoReport:
    data: Path
    protected: Path
    protect: Any  # ProtectReport
    verify: Any  # VerifyReport
    generator: str


def run_demo(out: Path, generator: str = DEMO_ALIAS, images: int = 800, epochs: int = 12, device: str = "auto",
             seed: int = 0, plot: bool = True, on_event: OnEvent | None = None) -> DemoReport:
    """Make the synthetic set, protect it with the shipped generator (80/20 holdout), verify it; with `plot`,
    the victims' learning curves go to OUT/curves.png (when matplotlib is installed; else the report says so)."""
    from mtlue_cli.models.persistence import load_generator
    from mtlue_cli.protect.protect import protect_dataset
    from mtlue_cli.verify.run import verify

    on_event = on_event or noop
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "labels.csv").is_file():
        log(on_event, f"writing {images} synthetic images to {data_dir / 'images'}")
        make_shapes(data_dir, n=images, seed=seed)
    data = DataConfig(root=data_dir / "images", labels=data_dir / "labels.csv")
    protected = out / "protected"
    protect_cfg = ProtectConfig(holdout=0.2, seed=seed, device=device, overwrite=True, preview=6)
    protect_report = protect_dataset(load_generator(generator), data, protected, protect_cfg, on_event)
    # A fixed epoch count, not verify's time budget: the demo's verdict must not depend on how busy the machine is.
    verify_cfg = VerifyConfig(epochs=epochs, seed=seed, device=device, batch_size=64, time_budget=None,
                              defenses=("none", "grayscale", "jpeg10", "bdr2"), plot=out / "curves.png" if plot else None)
    verify_report = verify(data, protected, verify_cfg, on_event=on_event)
    return DemoReport(data_dir, protected, protect_report, verify_report, generator)
