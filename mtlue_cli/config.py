"""Frozen configuration dataclasses, the presets that hold the paper's numbers, and their validation.

Every CLI flag maps to one field of the same name (style rule 3). Presets are plain dicts of field
values; `make_config` applies a preset, then the user's explicit flags on top. Each dataclass checks its
own fields when it is built (`__post_init__`), so a bad option is a `ConfigError` that names the field,
the value and what is allowed before any work starts. The allowed values live here, once; the modules
that use them (generator, classifiers, losses, robust, hub) import them. No torch here: `mtlue --help`
imports this module.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mtlue_cli.checks import bad as _bad
from mtlue_cli.checks import choice as _choice
from mtlue_cli.checks import integer as _integer
from mtlue_cli.checks import integers as _integers
from mtlue_cli.checks import milestones as _milestones
from mtlue_cli.checks import number as _number
from mtlue_cli.errors import ConfigError

SQUEEZES = ("identity", "grayscale", "jpeg", "bits", "blur")  # robust.random_squeeze draws from these
# Squeezes a recipe may add beyond the default mix: UEraser-lite's colour stage (issue 29; robust.py).
# op: the attacker's orthogonal projection, refitted on x+δ after every generator epoch (fit.py).
EXTRA_SQUEEZES = ("ueraser", "op")

# Named strengths map to an explicit L-inf budget (ecosystem §1.6, §5 "Presets").
EPSILON_PRESETS: dict[str, float] = {"low": 4 / 255, "medium": 8 / 255, "high": 16 / 255}
MAX_EPSILON = 64 / 255  # the largest budget any option or generator config may ask for

# nyuv2: .npy per sample (mtan, LibMTL); maps: images labelled by `maps` only; unlabelled: no labels (issue 30).
LAYOUTS = ("auto", "csv", "folder", "utkface", "celeba", "nyuv2", "maps", "unlabelled")
DENSE_KINDS = ("segmentation", "depth", "normals")  # label-map task kinds (data.dense_kinds)
SPLITS = ("train", "valid", "test", "all")  # CelebA partitions
CACHES = ("auto", "memory", "mmap")
METHODS = ("em", "tap", "sep")
STEM_DOWNSAMPLING = {"cifar": 2, "imagenet": 8}  # generator stem -> side of x over side of z (§2.1)
GENERATOR_STEMS = tuple(STEM_DOWNSAMPLING)
CONDITIONINGS = ("full", "classwise", "z_only")  # §2.2 ablations
BOUNDS = ("clamp", "tanh")
# Decorrelating δ from a class-wise template (issue 29; generator.py): none = the paper; shift = each image's δ
# circularly shifted and maybe flipped by an amount drawn from its pixels; shift-zm = that, with each channel's
# spatial mean removed first (no class-wise colour offset either).
DECORRELATIONS = ("none", "shift", "shift-zm")
# rgb = the paper's three free channels; luma = one value per pixel on R, G and B alike (issue 29, generator.py)
COLOURS = ("rgb", "luma")
WIDTHS = (16, 32, 64)  # 64 = the paper's ResNet-18 stem width (§2.1)
ER_FORMS = ("code", "paper")  # intra-task regulariser forms (§3.1)
BINARY_MODES = ("untargeted", "targeted")  # TAP on binary tasks (§3.2, §13.6)
TAP_BINARY = ("auto", *BINARY_MODES)
TAP_DENSE = ("auto", "untargeted")  # TAP on label maps: each kind's target (data.dense_kinds) or away from the truth
EM_STOP_MODES = ("eval", "train")  # BN mode of the EM stop check (§14.1)
ARCHS = ("resnet18", "resnet50", "vgg16", "densenet121", "vit_b_16")  # surrogate and victim trunks (§6.1)
CLASSIFIER_STEMS = ("imagenet", "cifar")
AMPS = ("auto", "bf16", "fp16", "off")
FORMATS = ("png", "webp", "jpeg")
METADATA = ("strip", "keep-safe", "keep-all")
WEIGHTINGS = ("ew", "uw", "rlw")  # §6.5
METRICS = ("acc", "auc")  # §6.4
DEVICES_HELP = "auto|cpu|cuda|cuda:N|mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MIN_SIZE = 8  # the smallest crop (default_crop) and image side anything is trained at


# ----------------------------------------------------------------------------- field checks


def _suits_stem(name: str, size: int, stem: str) -> None:
    """The decoder upsamples z back to exactly the input size only from a multiple of the stem's factor (§2.1)."""
    factor = STEM_DOWNSAMPLING[stem]
    if size % factor:
        raise _bad(name, size, f"a multiple of {factor} (the {stem} stem downsamples {factor}x)")


def _patches(name: str, arch: str, crop: int) -> None:
    """vit_b_16 cuts its input into 16-px patches: the crop it trains on must be a multiple of 16."""
    if arch == "vit_b_16" and crop % 16:
        raise ConfigError(f"--{name} vit_b_16 reads 16-px patches, but its crop is {crop} px (128/140 of the "
                          "working size unless --crop is given): use a crop that is a multiple of 16, e.g. a "
                          "working size of 70 or 140")


def map_spec(text: str, folder: bool = True) -> tuple[str, str, str]:
    """'task=kind:folder' (`maps`) or 'task=kind' (`map_columns`) -> (task, kind, folder); the folder may hold ':'."""
    task, _, rest = text.partition("=")
    kind, _, where = rest.partition(":") if folder else (rest, "", "")
    return task.strip(), kind.strip(), where.strip()


def _map_specs(name: str, values: Any, folder: bool) -> list[str]:
    """Each entry: a task (once), a label-map kind, and for `maps` a folder. Returns the task names."""
    tasks: list[str] = []
    for value in values if isinstance(values, (tuple, list)) else [values]:  # a lone string is an error
        task, kind, where = map_spec(value, folder) if isinstance(value, str) and value is not values else ("", "", "")
        if not task or kind not in DENSE_KINDS or (folder and not where) or (not folder and ":" in value):
            raise _bad(name, value, f"a list of task=kind{':folder' if folder else ''}, kind one of "
                                    f"{', '.join(DENSE_KINDS)} (e.g. seg=segmentation{':./masks' if folder else ''})")
        if task in tasks:
            raise ConfigError(f"--{name.replace('_', '-')} names task {task!r} twice: give each task one label map")
        tasks.append(task)
    return tasks


def _run_fields(config: Any) -> None:
    """The fields every command's config shares: the seed, the device and the autocast mode."""
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise _bad("seed", config.seed, "an integer")
    if not isinstance(config.device, str) or not _DEVICE.fullmatch(config.device.strip().lower()):
        raise _bad("device", config.device, DEVICES_HELP)
    _choice("amp", config.amp, AMPS)


@dataclass(frozen=True)
class DataConfig:
    """Where the images and labels are and how to read them."""

    root: Path
    labels: Path | None = None
    layout: str = "auto"
    path_column: str | None = None
    tasks: tuple[str, ...] | None = None
    partition: Path | None = None  # CelebA list_eval_partition.txt
    split: str = "train"  # CelebA partition to use: train|valid|test|all
    size: int = 64  # working resolution (square) fed to the generator / victims
    skip_bad: bool = False
    cache: str = "auto"  # auto|memory|mmap: where the decoded uint8 images live
    workers: int = 2  # decode threads
    maps: tuple[str, ...] = ()  # task=kind:folder (relative to the current dir): maps matched by path and stem
    map_columns: tuple[str, ...] = ()  # task=kind: labels-file columns whose values are paths to label maps
    ignore_index: int = 255  # the segmentation files' void value (VOC 255); .npy maps also mark void with -1
    depth_scale: float = 1.0  # stored depth / depth_scale = depth (1000 for millimetre PNGs, 256 for KITTI)

    def __post_init__(self) -> None:
        _choice("layout", self.layout, LAYOUTS)
        _choice("split", self.split, SPLITS)
        _choice("cache", self.cache, CACHES)
        _integer("size", self.size, MIN_SIZE)
        _integer("workers", self.workers, 0)
        if both := set(_map_specs("maps", self.maps, True)) & set(_map_specs("map_columns", self.map_columns, False)):
            raise ConfigError(f"task(s) {sorted(both)} given by both --maps and --map-columns: keep one source each")
        _integer("ignore_index", self.ignore_index, -1, 65535)
        _number("depth_scale", self.depth_scale, 0, low_open=True)


@dataclass(frozen=True)
class FitConfig:
    """Generator training (method-spec §4). Defaults are the UTKFace multi-class script (§4.6)."""

    method: str = "tap"
    epsilon: float = 8 / 255  # §2.3; the official 0.0314 overshoots 8/255 (§13.3)
    image_size: int = 64
    stem: str = "cifar"  # generator stem (§2.1)
    epochs: int = 100  # cap on generation steps (§4.6)
    batch_size: int = 128
    lr: float = 1e-3  # §4.1
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] | None = None  # None: 60% and 80% of the epochs ([60, 80] of 100, §4.1)
    scheduler_steps_per_epoch: int | None = None  # None: 1, or 4 for SEP (§4.4 compressed schedule)
    lambda_intra: float = 10.0  # §3.1
    lambda_inter: float = 200.0
    intra_form: str = "code"  # code|paper (§3.1)
    stop_error: float | None = None  # None: the method's default (§4.6)
    crop: int | None = None  # surrogate crop; None: 128/140 of the working size (§6.3)
    augment: bool = True
    tap_binary: str = "auto"  # auto|untargeted|targeted (§3.2, §13.6)
    tap_dense: str = "auto"  # TAP_DENSE; §8 gives no dense targets: auto = each kind's own (shift, reflect, negate)
    surrogate: str = "resnet18"
    surrogate_stem: str = "imagenet"  # the paper's victim trunk (§6.1)
    surrogate_epochs: int = 60  # §5
    surrogate_milestones: tuple[int, ...] | None = None  # None: 60% and 80% ([36, 48] of 60, §5)
    sep_every: int = 4  # SEP checkpoint interval in surrogate epochs (§5)
    sep_recompute: bool = False  # True: recompute δ per checkpoint, the official cost (§11)
    sep_paper_weighting: bool = False  # True: regularisers ×n_ckpt and BN momentum 0.79 (§14.1)
    em_train_steps: int = 2  # surrogate minibatches per generation step (§4.2)
    em_stop_mode: str = "eval"  # eval|train: BN mode of the EM stop check (§14.1)
    unprotected: tuple[str, ...] = ()  # tasks left learnable (§2.4)
    conditioning: str = "full"  # full|classwise|z_only (§2.2 ablations)
    bound: str = "clamp"  # clamp (the paper's hard ±ε, §2.3) | tanh (ε·tanh: gradients on every pixel)
    width: int = 64  # generator encoder width (§2.1: 64); 32 is ~3x faster on a CPU but weaker (RESULTS.md)
    decorrelate: str = "none"  # DECORRELATIONS; none = the paper (§2.3: δ = bound(D(.)) as decoded)
    colour: str = "rgb"  # COLOURS; rgb = the paper (§2.3)
    class_mean: float = 0.0  # weight of losses.class_mean_penalty (issue 29, OP); 0 = the paper (§4.1)
    robust: tuple[str, ...] = ()  # squeezes drawn per batch in the generator loop (SQUEEZES); () = the paper
    robust_surrogate: bool = False  # TAP/SEP surrogate trained on the same squeezes (needs `robust`)
    # With robust_surrogate: unsqueezed batches attack the clean surrogate, squeezed ones the squeeze-trained one.
    paired_surrogates: bool = False
    time_budget: float | None = None  # seconds for the whole fit; the epochs (at most `epochs`) are planned to fit
    stop_acc: float | None = None  # stop once the surrogate's mean true-label accuracy on x+δ is at most this
    clusters: tuple[int, ...] = (2, 5, 10)  # layout unlabelled (issue 30): k-means pseudo-tasks of that many clusters
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto|bf16|fp16|off (autocast on CUDA only)
    checkpoint_every: int = 5
    resume: bool = False

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _number("epsilon", self.epsilon, 0, MAX_EPSILON, low_open=True, shown="in (0, 64/255]")
        _choice("stem", self.stem, GENERATOR_STEMS)
        _integer("image_size", self.image_size, MIN_SIZE)
        _suits_stem("image_size", self.image_size, self.stem)
        for name in ("epochs", "batch_size", "surrogate_epochs", "sep_every", "em_train_steps", "checkpoint_every"):
            _integer(name, getattr(self, name), 1)
        _integer("scheduler_steps_per_epoch", self.scheduler_steps_per_epoch, 1, optional=True)
        _integer("crop", self.crop, MIN_SIZE, self.image_size, optional=True)
        _milestones("milestones", self.milestones)
        _milestones("surrogate_milestones", self.surrogate_milestones)
        _number("lr", self.lr, 0, low_open=True)
        for name in ("weight_decay", "lambda_intra", "lambda_inter", "class_mean"):
            _number(name, getattr(self, name), 0)
        _number("stop_error", self.stop_error, 0, 1, optional=True)
        _number("stop_acc", self.stop_acc, 0, 1, optional=True)
        _number("time_budget", self.time_budget, 0, low_open=True, optional=True)
        _choice("intra_form", self.intra_form, ER_FORMS)
        _choice("tap_binary", self.tap_binary, TAP_BINARY)
        _choice("tap_dense", self.tap_dense, TAP_DENSE)
        _choice("surrogate", self.surrogate, ARCHS)
        _patches("surrogate", self.surrogate, self.crop or default_crop(self.image_size))
        _choice("surrogate_stem", self.surrogate_stem, CLASSIFIER_STEMS)
        _choice("em_stop_mode", self.em_stop_mode, EM_STOP_MODES)
        _choice("conditioning", self.conditioning, CONDITIONINGS)
        _choice("bound", self.bound, BOUNDS)
        _choice("decorrelate", self.decorrelate, DECORRELATIONS)
        _choice("colour", self.colour, COLOURS)
        _choice("width", self.width, WIDTHS)
        for squeeze in self.robust:
            _choice("robust", squeeze, SQUEEZES + EXTRA_SQUEEZES)
        _integers("clusters", self.clusters, 2, 1000, most=8)  # issue 30: up to 8 pseudo-tasks of 2-1000 clusters
        if self.robust_surrogate and not self.robust:
            raise ConfigError("--robust-surrogate trains the surrogate on the --robust squeezes: give some")
        if self.paired_surrogates and not self.robust_surrogate:
            raise ConfigError("--paired-surrogates pairs the clean surrogate with the squeeze-trained one: "
                              "it needs --robust-surrogate")
        _run_fields(self)


@dataclass(frozen=True)
class ProtectConfig:
    """Writing protected copies (issue #5)."""

    format: str = "png"  # png|webp|jpeg
    quality: int = 95  # jpeg only
    metadata: str = "strip"  # strip|keep-safe|keep-all
    tag_no_ai: bool = False
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    batch_size: int = 32
    workers: int = 0  # decode/encode threads; 0: the cores this process may use (protect.threads.resolve_workers)
    preview: int = 0
    holdout: float = 0.0  # fraction left out (the clean test split of `verify --test-split`)
    predict_labels: bool = True  # tasks the labels lack: predicted by the generator's labeller when it has one
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"

    def __post_init__(self) -> None:
        _choice("format", self.format, FORMATS)
        _integer("quality", self.quality, 1, 100)
        _choice("metadata", self.metadata, METADATA)
        _integer("batch_size", self.batch_size, 1)
        _integer("workers", self.workers, 0)
        _integer("preview", self.preview, 0)
        _number("holdout", self.holdout, 0, 1, high_open=True)
        _run_fields(self)


@dataclass(frozen=True)
class VerifyConfig:
    """Victim training on the written files (method-spec §6)."""

    victim: str = "resnet18"
    victim_stem: str = "imagenet"  # §6.1: the paper's ResNet victims use the ImageNet stem
    epochs: int = 60
    milestones: tuple[int, ...] | None = None  # None: 60% and 80% of the epochs (§6.2)
    res: int | None = None  # None: max(64, the generator's working size), or the images' own size if smaller
    crop: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weighting: str = "ew"  # ew|uw|rlw (§6.5)
    # The cheap squeezes an attacker tries first; "all" adds blur, median, resize, orthogonal projection and
    # UEraser-lite (defenses.ALL). Every defence trains a protected-trained victim.
    defenses: tuple[str, ...] = ("none", "grayscale", "jpeg10", "bdr2")
    # Also a clean-trained victim under each defence (the defence's cost to clean data). Off by default: within
    # the time budget, the verdict's victims get the epochs instead.
    profile: bool = False
    adv_train: bool = False
    stl: bool = False
    test_split: float = 0.2
    threshold: float = 5.0  # points above the majority baseline (AUC: above 0.5) that still count as protected
    # A label-map task's protection ratio (metrics.protection_ratio: the share of the clean victim's lead over the
    # no-skill baseline that the protected-trained victim keeps) that still counts as protected (issue 28).
    dense_threshold: float = 0.2
    metric: str = "acc"  # acc|auc (§6.4: mean AUC for multi-label binary data such as ChestX-ray14)
    seed: int = 0  # the clean test split's seed (protect's --holdout seed), and the first victim's
    seeds: int = 1  # victims per defence and side, seeded victim_seed.. on one split; their mean is judged (verdict.py)
    victim_seed: int | None = None  # None: `seed` (benchmarks vary the victims' seeds apart from the split's)
    device: str = "auto"
    amp: str = "auto"
    cache: bool = True  # reuse the clean baseline of identical data + recipe (MTLUE_CACHE_DIR)
    time_budget: float | None = 1200.0  # seconds for all victims; picks the epochs (at most `epochs`); None: no limit
    detect: bool = False  # linear-probe detectability of the protected set vs the originals (detect.py)
    plot: Path | None = None  # PNG of the victims' test accuracy per epoch (plot.py; needs the `plot` extra)

    def __post_init__(self) -> None:
        _choice("victim", self.victim, ARCHS)
        if self.crop is not None:  # else the crop follows the images' size (verify)
            _patches("victim", self.victim, self.crop)
        _choice("victim_stem", self.victim_stem, CLASSIFIER_STEMS)
        for name in ("epochs", "batch_size", "seeds"):
            _integer(name, getattr(self, name), 1)
        _integer("victim_seed", self.victim_seed, 0, optional=True)
        _milestones("milestones", self.milestones)
        _integer("res", self.res, MIN_SIZE, optional=True)
        _integer("crop", self.crop, MIN_SIZE, self.res, optional=True)
        _number("lr", self.lr, 0, low_open=True)
        _number("weight_decay", self.weight_decay, 0)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("metric", self.metric, METRICS)
        _number("test_split", self.test_split, 0, 1, high_open=True)
        _number("threshold", self.threshold, 0)
        _number("dense_threshold", self.dense_threshold, 0, 1, high_open=True)
        _number("time_budget", self.time_budget, 0, low_open=True, optional=True)
        if isinstance(self.defenses, str) or not self.defenses or not all(isinstance(d, str) for d in self.defenses):
            raise _bad("defenses", self.defenses, "a non-empty tuple of defence names")
        _run_fields(self)


T = TypeVar("T")


def make_config(cls: type[T], recipe: dict[str, Any] | None = None, **overrides: Any) -> T:
    """Build `cls` from its defaults, then `recipe`, then the non-None `overrides` (explicit flags)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = dict(recipe or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown option(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    return cls(**values)


def milestones(epochs: int, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """LR drops at 60% and 80% of the run unless given (the paper's [60, 80]/100 and [36, 48]/60)."""
    return tuple(given) if given is not None else (int(epochs * 0.6), int(epochs * 0.8))


MIN_VICTIM_RES = 64  # the attacker a user should fear trains at 64 px or more


def victim_res(working_size: int | None, image_size: int | None) -> int:
    """Default victim resolution: at least 64 px whatever the generator's working size, never above the
    images' own size (a 32-px dataset is judged at 32 px)."""
    res = max(MIN_VICTIM_RES, working_size or 0)
    return min(res, image_size) if image_size else res


def default_crop(size: int) -> int:
    """The paper crops 128 of 140 and 64 of 70 (§6.3): about 91% of the stored size."""
    return max(8, round(size * 128 / 140))

