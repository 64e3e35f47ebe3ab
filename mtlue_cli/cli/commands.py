"""The commands: options -> config -> ONE library call -> rendering of the report it returns (style rule 1).

Library modules are imported inside the commands, so `mtlue --help` never loads torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtlue_cli.cli.options import (
    AmpOpt,
    ClustersOpt,
    DataArg,
    DebugOpt,
    DeviceOpt,
    LabelOptions,
    LabelsOpt,
    MapOptions,
    QuietOpt,
    ReadOptions,
    SeedOpt,
    SkipBadOpt,
    WorkersOpt,
    app,
    names,
    option_groups,
    parse_clusters,
    parse_duration,
    parse_epsilon,
)
from mtlue_cli.cli.render import (
    Renderer,
    console,
    errors,
    out_console,
    rank0_talks,
    render_clusters,
    render_fit,
    render_inspect,
    render_protect,
    render_recipe,
)
from mtlue_cli.cli.render_verify import render_verify
from mtlue_cli.config import EPSILON_PRESETS, SQUEEZES, ProtectConfig, VerifyConfig, make_config
from mtlue_cli.errors import ConfigError
from mtlue_cli.files import write_text
from mtlue_cli.recipes import VERIFY_RECIPES

# verify's and demo's exit code per verdict (style rule 7: the exit code says what happened).
VERDICT_EXIT = {"effective": 0, "not effective": 4, "inconclusive": 5}
EPILOG_PRESETS = ", ".join(f"{k} = {round(v * 255)}/255" for k, v in EPSILON_PRESETS.items())


@app.command(epilog=("Examples:\n\n  mtlue inspect ./photos --labels attrs.csv\n\n  mtlue inspect ./UTKFace --layout utkface "
                      "--json\n\n  mtlue inspect ./scenes/images --map seg=segmentation:./scenes/segmentation "
                      "--map depth=depth:./scenes/depth --depth-scale 1000"))
@option_groups
def inspect(
    data: DataArg,
    labels: LabelsOpt = None,
    read: ReadOptions = ReadOptions(),
    label_maps: MapOptions = MapOptions(),
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    clusters: ClustersOpt = None,
    sheet: Annotated[Optional[Path], typer.Option(help="Images without labels: write a contact sheet of each cluster's members to this PNG.")] = None,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Dry run: tasks, classes, counts, image modes and problems, before any training. For images without labels:
    the k-means clusters `fit` would train on (--clusters), with a contact sheet of their members (--sheet)."""
    with errors(debug):
        from mtlue_cli.data.inspect import inspect_dataset

        cfg = dataclasses.replace(read.data_config(data, labels, False, workers), **label_maps.fields())
        preview = None
        with Renderer(quiet or json_out) as render:
            report = inspect_dataset(cfg, on_event=render)
            if report.layout == "unlabelled" and not report.problems:
                from mtlue_cli.fit.clusters import preview_clusters

                preview = preview_clusters(cfg, parse_clusters(clusters), sheet, on_event=render)
    if json_out:
        extra = {} if preview is None else {"clusters": {**dataclasses.asdict(preview), "sheet": str(preview.sheet or "")}}
        out_console.print_json(json.dumps({**report.to_dict(), **extra}))
    else:
        render_inspect(report)
        if preview is not None:
            render_clusters(preview)
    raise typer.Exit(1 if report.problems else 0)


@app.command(epilog=(
    "Strength presets (--preset): " + EPILOG_PRESETS + ". --epsilon overrides (8/255, 0.0314 or 8).\n\n"
    "Recipes (--recipe): auto = strong on a GPU, cpu on the CPU. cpu = TAP at 64 px with the generator's ImageNet "
    "stem (cheaper on a CPU than the paper's CIFAR stem), full width, ε·tanh, squeeze training, as many epochs as fit a "
    "19-minute budget (method-spec §14.3: smaller working size than the paper); strong = 64 px, CIFAR stem, 60 epochs; paper-utkface = 140 px, crop 128, batch 128, 100 epochs, the paper's hard "
    "clamp and no squeeze training; paper-celeba = 70 px, crop 64, batch 512; quick (--quick) = a smoke test, not "
    "protection: every stage at 32 px with a narrow generator in a one-minute budget (81 s on 200 UTKFace faces on "
    "2 CPU cores shared with other jobs; one surrogate epoch and at least one generator epoch always run, so more "
    "images take longer).\n\n"
    "Examples:\n\n  mtlue fit ./faces --labels attrs.csv --out gen/\n\n"
    "  mtlue fit ./faces --labels attrs.csv --time-budget 45m --out gen/\n\n"
    "  torchrun --nproc_per_node 4 -m mtlue_cli fit ./faces --labels attrs.csv --recipe paper-utkface --out gen/"
))
@option_groups
def fit(
    data: DataArg,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the generator to.")] = Path("runs/generator"),
    method: Annotated[str, typer.Option(help="Base objective: em|tap|sep (method-spec §3.2).")] = "tap",
    preset: Annotated[str, typer.Option(help="Strength: low|medium|high (L-inf 4, 8, 16 /255).")] = "medium",
    epsilon: Annotated[Optional[str], typer.Option(help="Explicit L-inf budget; overrides --preset.")] = None,
    recipe: Annotated[str, typer.Option(help="auto|cpu|strong|paper-utkface|paper-celeba|quick (see below).")] = "auto",
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test, not protection: checks that DATA and this machine run a whole fit, in about a minute on 200 images (--recipe quick).")] = False,
    size: Annotated[Optional[int], typer.Option(help="Working resolution in px (overrides the recipe).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Cap on generator epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    surrogate_epochs: Annotated[Optional[int], typer.Option(help="Clean surrogate epochs (TAP/SEP).")] = None,
    stop_error: Annotated[Optional[float], typer.Option(help="Stop when the surrogate's error on x+δ against the method's targets is at most this.")] = None,
    lambda_intra: Annotated[Optional[float], typer.Option(help="Intra-task embedding regulariser weight (10).")] = None,
    lambda_inter: Annotated[Optional[float], typer.Option(help="Inter-task embedding regulariser weight (200).")] = None,
    intra_form: Annotated[Optional[str], typer.Option(help="code|paper form of the intra-task regulariser.")] = None,
    tap_binary: Annotated[Optional[str], typer.Option(help="auto|untargeted|targeted objective for binary tasks.")] = None,
    tap_dense: Annotated[Optional[str], typer.Option(help="TAP on label maps: auto (each kind's target: a class shift, reflected depth, negated normals) or untargeted (away from the true map).")] = None,
    sep_recompute: Annotated[bool, typer.Option("--sep-recompute", help="SEP: regenerate δ per checkpoint, the official (slow) loop.")] = False,
    sep_paper_weighting: Annotated[bool, typer.Option("--sep-paper-weighting", help="SEP: official BN momentum (method-spec §14.1).")] = False,
    em_stop_mode: Annotated[Optional[str], typer.Option(help="EM stop check with the surrogate in eval (ours) or train (official) mode.")] = None,
    unprotected: Annotated[Optional[str], typer.Option(help="Comma-separated tasks to leave learnable: the generator does not protect them (method-spec §2.4).")] = None,
    surrogate: Annotated[Optional[str], typer.Option(help="Surrogate trunk: resnet18|resnet50|vgg16|densenet121|vit_b_16.")] = None,
    bound: Annotated[Optional[str], typer.Option(help="How δ is kept within ±ε: clamp (the paper's hard clamp) or tanh (ε·tanh; learns faster in short runs).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Generator width: 64 (the paper's), 32 or 16 (cheaper).")] = None,
    stem: Annotated[Optional[str], typer.Option(help="Generator stem: cifar (the paper's for 70/140 px; --size a multiple of 2) or imagenet (8x down and up; --size a multiple of 8; the CPU default).")] = None,
    robust: Annotated[Optional[bool], typer.Option("--robust/--no-robust", help="Train through the attacker's cheap squeezes (grayscale, JPEG, bit depth, blur). On in auto/cpu/strong/quick, off in paper-*.")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Wall-clock budget for the whole fit, e.g. 15m, 1h, 900 (seconds); 'none' lifts the recipe's: the generator epochs are planned to fit it.")] = None,
    stop_acc: Annotated[Optional[float], typer.Option(help="Stop once the surrogate's mean accuracy on x+δ (true labels) is at most this, e.g. 0.1.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Save a resumable checkpoint every N epochs.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    clusters: ClustersOpt = None,
    amp: AmpOpt = "auto",
    read: ReadOptions = ReadOptions(),
    label_maps: MapOptions = MapOptions(),
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a protection generator on your images and their labels (EM, TAP or SEP + the MTL-UE regularisers); label
    maps (segmentation, depth, normals: --map, --map-column, the nyuv2 layout) are tasks too, mixed with class labels.
    A flat folder of images with no labels (or --layout unlabelled) is fitted on k-means clusters of the images
    (--clusters), and the generator keeps what `protect` needs to label new photos the same way."""
    quiet = rank0_talks(quiet)
    with errors(debug):
        from mtlue_cli.fit.folder import fit_config, fit_folder

        if preset not in EPSILON_PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(EPSILON_PRESETS)}")
        if quick and recipe not in ("auto", "quick"):
            raise ConfigError(f"--quick is --recipe quick: give --quick or --recipe {recipe}, not both")
        lift = bool(time_budget) and time_budget.strip().lower() == "none"  # --epochs alone decides
        name, cfg = fit_config(
            "quick" if quick else recipe, method=method, epsilon=parse_epsilon(epsilon or preset), image_size=size,
            epochs=epochs, batch_size=batch_size, surrogate_epochs=surrogate_epochs, stop_error=stop_error,
            lambda_intra=lambda_intra, lambda_inter=lambda_inter, intra_form=intra_form, tap_binary=tap_binary,
            tap_dense=tap_dense,
            sep_recompute=sep_recompute, sep_paper_weighting=sep_paper_weighting, em_stop_mode=em_stop_mode,
            unprotected=names(unprotected), surrogate=surrogate, bound=bound, checkpoint_every=checkpoint_every,
            resume=resume, amp=amp, device=device, seed=seed, width=width, stem=stem, stop_acc=stop_acc,
            clusters=parse_clusters(clusters),
            robust=None if robust is None else (SQUEEZES if robust else ()),
            time_budget=parse_duration(time_budget) if time_budget and not lift else None,
        )
        if lift:
            cfg = dataclasses.replace(cfg, time_budget=None)
        data_cfg = dataclasses.replace(read.data_config(data, labels, skip_bad, workers), **label_maps.fields())
        render_recipe(name, cfg)
        with Renderer(quiet) as render:
            report = fit_folder(data_cfg, cfg, out, on_event=render)
    render_fit(report)
    console.print(f"[green]generator written to {out}[/]  next: mtlue protect {data} --generator {out} --out PROTECTED")


@app.command(epilog=(
    "Output: the input tree mirrored under --out with names kept, lossless PNG by default, labels.csv with "
    "rewritten paths, manifest.jsonl (one line per file: hashes, measured L-inf, PSNR, SSIM) and run.json. "
    "Label maps (--map, --map-column, layout nyuv2) are copied unchanged to OUT/maps/TASK/ (nyuv2: its own folders, "
    "its .npy images written back as .npy); labels.csv gives each map's path. "
    "Without --generator, a generator is fitted on DATA first with the default recipe and kept in OUT/generator/. "
    "Exit code 3 when some files failed or, with --skip-bad, had no label row. Under torchrun each process protects every Nth batch and rank 0 "
    "merges the manifest; the files are the same as one process writes.\n\n"
    "Examples:\n\n  mtlue protect ./photos --labels attrs.csv --out ./photos-protected --holdout 0.2\n\n"
    "  mtlue protect ./photos --labels attrs.csv --generator gen/ --out ./photos-protected\n\n"
    "  mtlue protect ./UTKFace --generator org/mtlue-utkface@v1 --out ./utk-protected --holdout 0.2 --preview 8\n\n"
    "  mtlue protect ./faces --generator faces-utkface --out ./faces-protected   (no labels: predicted)\n\n"
    "  torchrun --nproc_per_node 4 -m mtlue_cli protect ./photos -l attrs.csv -g gen/ --out ./photos-protected\n\n"
    "  mtlue protect ./scenes/images -l ./scenes/labels.csv -g gen/ --out ./scenes-protected "
    "--map seg=segmentation:./scenes/segmentation --map depth=depth:./scenes/depth --depth-scale 1000"
))
@option_groups
def protect(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not be inside DATA).")],
    generator: Annotated[Optional[str], typer.Option("--generator", "-g", help="A folder written by `mtlue fit`/`export`, a pretrained alias (see `mtlue export --list`), or a Hub repo id `org/name[@revision]`. Omit it to fit one on DATA first (kept in OUT/generator/).")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Without --generator: the fit's wall-clock budget (default: the recipe's, 19 min on a CPU).")] = None,
    labels: LabelsOpt = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    format: Annotated[str, typer.Option("--format", help="png|webp (lossless) or jpeg (lossy, weakens protection).")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 95,
    metadata: Annotated[str, typer.Option(help="strip|keep-safe (copyright, artist, ICC)|keep-all.")] = "strip",
    tag_no_ai: Annotated[bool, typer.Option("--tag-no-ai", help="Write the IPTC/PLUS 'prohibited for AI/ML training' XMP field.")] = False,
    holdout: Annotated[float, typer.Option(help="Leave this seeded fraction out (the clean test split for `verify --test-split`).")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Skip files already written (manifest + hash match).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder's files.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first file that fails.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per generator batch.")] = 32,
    preview: Annotated[int, typer.Option(help="Write OUT.preview.png with N rows: original, protected, amplified δ (the centre of each file at its own resolution), columns named, each row captioned with its file and labels.")] = 0,
    predict_labels: Annotated[bool, typer.Option("--predict-labels/--no-predict-labels", help="Tasks your labels lack (or all of them, with no labels): predicted by the generator's labeller when it has one, and recorded in OUT/predicted_labels.csv; with --no-predict-labels they stay unprotected.")] = True,
    clusters: ClustersOpt = None,
    amp: AmpOpt = "auto",
    read: ReadOptions = ReadOptions(),
    label_maps: MapOptions = MapOptions(),
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: Annotated[int, typer.Option(help="Decode/encode threads; 0: one per core this process may use (shared by the torchrun processes of a node).")] = 0,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a protected copy of every labelled image (originals are never modified)."""
    quiet = rank0_talks(quiet)
    with errors(debug):
        from mtlue_cli.protect.protect import protect_folder

        cfg = ProtectConfig(format=format, quality=quality, metadata=metadata, tag_no_ai=tag_no_ai, resume=resume,
                            overwrite=overwrite, strict=strict, batch_size=batch_size, workers=workers, preview=preview,
                            holdout=holdout, seed=seed, device=device, amp=amp, predict_labels=predict_labels)
        data_cfg = dataclasses.replace(read.data_config(data, labels, skip_bad, workers), **label_maps.fields())
        fit_cfg = None
        if generator is None:
            from mtlue_cli.fit.folder import fit_config

            name, fit_cfg = fit_config(device=device, seed=seed, amp=amp, clusters=parse_clusters(clusters),
                                       time_budget=parse_duration(time_budget) if time_budget else None)
            budget = f" ({fit_cfg.time_budget / 60:.0f} min budget)" if fit_cfg.time_budget else ""
            console.print(f"no --generator: fitting one with the {name} recipe first{budget}")
        elif time_budget or clusters:
            raise ConfigError(f"--{'time-budget' if time_budget else 'clusters'} is for the fit that runs when no "
                              "--generator is given")
        with Renderer(quiet) as render:
            report = protect_folder(data_cfg, out, cfg, generator, revision, fit_cfg, on_event=render)
    render_protect(report)
    raise typer.Exit(0 if report.complete else 3)


@app.command(epilog=(
    "Exit codes: 0 = every task at or below its baseline (the majority class, or a uniform guess where higher) + --threshold points with no defence and after "
    "each --defense (protection effective; a label-map task: its protection ratio at most --dense-threshold), 4 = some task above it, 5 = no verdict: the victim trained on the "
    "originals did not learn some task either, 1 = error.\n\n"
    "Examples:\n\n  mtlue protect ./photos -l attrs.csv -o prot/ --holdout 0.2 && mtlue verify prot/\n\n"
    "  mtlue verify prot/ --res 128 --recipe paper --time-budget none\n\n"
    "  mtlue verify prot/ --defense all --detect --plot curves.png --time-budget 1h\n\n"
    "  mtlue verify --clean ./photos --protected prot/ -l attrs.csv --test ./held-out --defense none,jpeg10"
))
@option_groups
def verify(
    out: Annotated[Optional[Path], typer.Argument(help="A folder written by `mtlue protect`: its run.json gives the originals, labels, layout and clean holdout.", show_default=False)] = None,
    clean: Annotated[Optional[Path], typer.Option("--clean", help="Folder with the original images (default: from OUT/run.json).")] = None,
    protected: Annotated[Optional[Path], typer.Option("--protected", help="Folder written by `mtlue protect` (the long form of OUT).")] = None,
    labels: LabelsOpt = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="A separate folder of clean test images (same labels layout).")] = None,
    test_labels: Annotated[Optional[Path], typer.Option(help="Labels for --test (default: --labels).")] = None,
    test_split: Annotated[Optional[float], typer.Option(help="Seeded fraction of --clean used as the clean test set (default: protect's --holdout from run.json, else 0.2).")] = None,
    victim: Annotated[str, typer.Option(help="resnet18|resnet50|vgg16|densenet121|vit_b_16 (torchvision, no download).")] = "resnet18",
    recipe: Annotated[str, typer.Option(help="quick (15 epochs) | paper (60 epochs, method-spec §6.2).")] = "quick",
    epochs: Annotated[Optional[int], typer.Option(help="Victim epochs (overrides --recipe).")] = None,
    res: Annotated[Optional[int], typer.Option(help="Victim resolution (default: 64 px or the generator's working size if larger; the images' own size if smaller).")] = None,
    batch_size: Annotated[int, typer.Option(help="Victim batch size.")] = 128,
    weighting: Annotated[str, typer.Option(help="Task weighting: ew|uw|rlw.")] = "ew",
    defense: Annotated[str, typer.Option("--defense", help="Comma list: none, grayscale, jpegQ, bdrB, blurS, medianK, resizeF, op (orthogonal projection), ueraser-lite, or all. Each trains a protected-trained victim; the verdict covers every one.")] = "none,grayscale,jpeg10,bdr2",
    adv_train: Annotated[bool, typer.Option("--adv-train", help="PGD adversarial training of the victim (slow).")] = False,
    stl: Annotated[bool, typer.Option("--stl", help="Also train one single-task victim per task.")] = False,
    threshold: Annotated[float, typer.Option(help="Points above the baseline (majority class or uniform guess, whichever is higher; 0.5 for AUC) that still count as protected.")] = 5.0,
    dense_threshold: Annotated[float, typer.Option(help="Label-map tasks: the share of the clean-trained victim's lead over the no-skill predictor that the protected-trained victim may keep and still count as protected (0 = no better than no skill).")] = 0.2,
    metric: Annotated[str, typer.Option(help="acc (top-1 accuracy) or auc (ROC-AUC per task, for multi-label binary data).")] = "acc",
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Also train a victim on the originals under each defence: what the defence costs clean data (one more victim per defence).")] = False,
    detect: Annotated[bool, typer.Option("--detect", help="Also test whether a linear model spots the protected classes (seconds).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help='PNG of test accuracy per epoch per task (needs pip install "mtlue\\[plot]").')] = None,
    time_budget: Annotated[str, typer.Option(help="Budget for all victims (e.g. 20m, 1h, 900 s; 'none' = no limit): picks the victim epochs (at most --epochs).")] = "20m",
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse the clean-victim result of identical data and recipe (~/.cache/mtlue or MTLUE_CACHE_DIR).")] = True,
    amp: AmpOpt = "auto",
    read: LabelOptions = LabelOptions(),
    label_maps: MapOptions = MapOptions(),
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: protect's, from run.json, else 0).")] = None,
    seeds: Annotated[int, typer.Option(help="Victims per defence and training set, seeded --seed .. --seed+N-1 on the same test split: the verdict reads their mean ± sd and says which tasks are within noise of the threshold.")] = 1,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train quick victims on the protected files as written and on the originals; test both on clean images."""
    with errors(debug):
        from mtlue_cli.verify.run import VerifyRequest, verify_folder

        if recipe not in VERIFY_RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(VERIFY_RECIPES)}")
        if out is not None and protected is not None and out != protected:
            raise ConfigError("give the protected folder once: as OUT or as --protected")
        folder = protected or out
        if folder is None:
            raise ConfigError("give the folder `mtlue protect` wrote: mtlue verify OUT")
        budget = None if time_budget.strip().lower() in ("none", "0", "off") else parse_duration(time_budget)
        cfg = make_config(VerifyConfig, VERIFY_RECIPES[recipe], victim=victim, epochs=epochs, res=res,
                          batch_size=batch_size, weighting=weighting, defenses=names(defense) or ("none",),
                          adv_train=adv_train, stl=stl, threshold=threshold, dense_threshold=dense_threshold,
                          metric=metric, cache=cache,
                          device=device, amp=amp, detect=detect, plot=plot, profile=profile, seeds=seeds)
        if recipe != "paper" or time_budget != "20m":  # the paper recipe trains in full unless a budget is given
            cfg = dataclasses.replace(cfg, time_budget=budget)
        # Left None, the originals, labels, layout, holdout and seed are what protect recorded in OUT/run.json.
        request = VerifyRequest(folder, clean=clean, labels=labels, layout=read.layout, path_column=read.path_column,
                                tasks=names(read.tasks), test=test, test_labels=test_labels, test_split=test_split,
                                seed=seed, skip_bad=skip_bad, workers=workers, save=out is not None,
                                maps=tuple(label_maps.maps) if label_maps.maps else None,
                                map_columns=tuple(label_maps.map_columns) if label_maps.map_columns else None,
                                ignore_index=label_maps.ignore_index, depth_scale=label_maps.depth_scale)
        with Renderer(quiet) as render:
            report = verify_folder(request, cfg, on_event=render)
    render_verify(report)
    if json_file is not None:
        write_text(json_file, report.to_json())
    raise typer.Exit(VERDICT_EXIT[report.verdict])


@app.command(epilog="Example:\n\n  mtlue demo --out mtlue-demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data, protected copies and preview.")] = Path("mtlue-demo"),
    dense: Annotated[bool, typer.Option("--dense", help="The label-map demo: synthetic scenes with segmentation, depth and normal maps and an object count, protected with the bundled demo-scenes generator (about 4 minutes on a CPU).")] = False,
    generator: Annotated[Optional[str], typer.Option("--generator", "-g", help="Generator to use (default: demo-shapes; demo-scenes with --dense).", show_default=False)] = None,
    images: Annotated[Optional[int], typer.Option(help="Synthetic images to make (default: 800; 600 scenes with --dense).", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Victim epochs (default: 12 for both demos).", show_default=False)] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write OUT/curves.png: the victims' test accuracy per epoch, majority line drawn (needs matplotlib).")] = True,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Protect and verify a built-in synthetic multi-task image set: no data of your own needed (about 2 minutes on a CPU).

    Writes OUT/protected.preview.png (originals, protected copies, amplified δ) and OUT/curves.png (learning curves).

    Exit code 0 when the protection holds for every task with and without each squeeze, 4 when it does not, 5 when the
    victim trained on the originals did not learn some task (no verdict)."""
    with errors(debug):
        from mtlue_cli.demo.run import run_demo

        with Renderer(quiet) as render:
            report = run_demo(out, generator=generator, images=images, epochs=epochs, device=device, seed=seed,
                              plot=plot, on_event=render, kind="scenes" if dense else "shapes")
    render_protect(report.protect)
    render_verify(report.verify)
    console.print(f"originals: {report.data}   protected: {report.protected}")
    raise typer.Exit(VERDICT_EXIT[report.verify.verdict])
