"""Rich rendering of `verify`'s report: the per-task table, one column per defence, the verdict, the robustness
profile and detectability (the report's own properties decide; this module only prints them)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from mtlue_cli.cli.render import SHORT_DEFENSE, console

# The label-map scores as a reader who does not train models would name them (metrics' keys).
SCORE_NAMES = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "abs_error": "depth error (abs)",
               "rel_error": "depth error (rel)", "delta1": "depth within 25%", "mean_angle": "angle error (mean, °)",
               "median_angle": "angle error (median, °)"}


def score_name(key: str) -> str:
    return SCORE_NAMES.get(key, key.replace("within_", "angle within ") + ("°" if key.startswith("within_") else ""))


def render_verify(report: Any) -> None:
    extra = [d for d in report.defenses if d != "none"]
    inline = extra if len(extra) <= 3 else []  # more defences get a table of their own
    if report.classified:
        _render_classes(report, extra, inline)
    if len(report.classified) < len(report.tasks):
        _render_maps(report, extra)
    _render_profile(report)
    _render_extras(report, extra)


def _render_classes(report: Any, extra: list[str], inline: list[str]) -> None:
    """The classification tasks: victim accuracies (or AUC) per task, one column per defence, and their mean."""
    table = Table(title="victim accuracy on clean test images (lower is better for you)", title_justify="left")
    for col in ("task", "majority", "clean", "protected", *inline, "best", "train*"):
        table.add_column(col, justify="left" if col == "task" else "right")

    seeded = _seeded(report)

    def cell(row: Any, value: float, defense: str | None = None) -> str:
        sd = f" ± {row.sd(defense):.1%}" if seeded and defense is not None else ""
        return f"[{'green' if row.within(value, report.threshold) else 'red'}]{value:.1%}{sd}[/]"

    for row in report.classified:
        table.add_row(row.task, f"{row.majority:.1%}", f"{row.clean_acc:.1%}", cell(row, row.protected_acc, "none"),
                      *(cell(row, row.by_defense[d], d) for d in inline), f"{row.protected_best:.1%}",
                      f"{row.protected_train_acc:.1%}")
    mean = report.to_dict()["mean"]
    table.add_row("[bold]mean[/]", f"{mean['majority']:.1%}", f"{mean['clean_acc']:.1%}", f"{mean['protected_acc']:.1%}",
                  *(f"{mean['by_defense'][d]:.1%}" for d in inline), "", f"{mean['protected_train_acc']:.1%}")
    console.print(table)
    if extra and not inline:
        wide = Table(title="protected-trained victim after each defence", title_justify="left")
        for col in ("task", *(SHORT_DEFENSE.get(d, d) for d in extra)):
            wide.add_column(col, justify="left" if col == "task" else "right")
        for row in report.classified:
            wide.add_row(row.task, *(cell(row, row.by_defense[d], d) for d in extra))
        wide.add_row("[bold]mean[/]", *(f"{mean['by_defense'][d]:.1%}" for d in extra))
        console.print(wide)
    console.print("[dim]clean / protected: victims trained on the originals / on the protected files; "
                  + ("defence columns: the protected files after the attacker's defence; " if extra else "")
                  + "best: the protected victim's best epoch; train*: its accuracy on its own training files "
                  "(high train with low test accuracy is the shortcut signature)[/]")
    for row in report.classified:
        if row.baseline > row.majority:
            console.print(f"[dim]{row.task}: its training majority class scores {row.majority:.1%} on these test images, "
                          f"below a uniform guess ({row.baseline:.1%}); the threshold counts from the guess[/]")


def _seeded(report: Any) -> bool:
    return len(report.recipe.get("victim_seeds", [])) > 1


def _render_maps(report: Any, extra: list[str]) -> None:
    """The label-map tasks: each one's score for the clean-trained and protected-trained victims and a no-skill
    predictor, and the protection ratio the verdict reads, in one line a non-specialist can follow."""
    seeded = _seeded(report)
    table = Table(title="label maps on clean test images: the share of the clean model's lead over no skill that "
                  "the protected files still give (ratio; lower is better for you)", title_justify="left")
    for col in ("task", "score", "no skill", "clean", "protected", *extra, "ratio"):
        table.add_column(col, justify="left" if col in ("task", "score") else "right")

    def cell(row: Any, defense: str) -> str:
        value, ratio = row.by_defense[defense], row.ratios().get(defense)
        sd = f" ± {row.show(row.sd(defense))}" if seeded else ""
        shown = f"{row.show(value)}{sd}" + (f" ({ratio:+.2f})" if ratio is not None and defense != "none" else "")
        return f"[{'green' if row.within(value, report.threshold) else 'red'}]{shown}[/]"

    dense = [row for row in report.tasks if row.dense]
    for row in dense:
        ratio = row.ratios().get("none")
        table.add_row(row.task, f"{score_name(row.metric)} ({'higher' if row.higher_is_better else 'lower'} = better)",
                      row.show(row.majority), row.show(row.clean_acc), cell(row, "none"),
                      *(cell(row, d) for d in extra), "—" if ratio is None else f"{ratio:+.2f}")
    console.print(table)
    for row in dense:
        ratio = row.ratios().get("none")
        mark = ("[yellow]no verdict: the clean model did no better than no skill[/]" if ratio is None else
                "[green]✓[/]" if ratio <= row.ratio_threshold else f"[red]✗ (above {row.ratio_threshold:g})[/]")
        console.print(f"{escape(row.task)}: {score_name(row.metric)} {row.show(row.clean_acc)} clean, "
                      f"{row.show(row.protected_acc)} protected, {row.show(row.majority)} no-skill: "
                      + ("" if ratio is None else f"ratio {ratio:+.2f} ") + mark, highlight=False)
        others = [k for k in row.trivial if k != row.metric]
        if others and row.clean_scores and "none" in row.scores_by_defense:
            console.print("[dim]  " + "; ".join(
                f"{score_name(k)} {row.clean_scores[k]:.3g} clean, {row.scores_by_defense['none'][k]:.3g} protected, "
                f"{row.trivial[k]:.3g} no-skill" for k in others if k in row.clean_scores) + "[/]", highlight=False)
    console.print(f"[dim]no skill: the better of one value everywhere and one value per pixel, fitted on the training "
                  f"maps; ratio = (protected - no skill) / (clean - no skill): 1 = the protection took nothing away, "
                  f"0 or below = no better than no skill; at most {dense[0].ratio_threshold:g} counts as protected "
                  "(--dense-threshold)[/]")


def _render_extras(report: Any, extra: list[str]) -> None:
    if report.detect is not None:
        _render_detect(report.detect)
    if any(row.stl_protected_acc is not None for row in report.tasks):
        stl = Table(title="single-task victims", title_justify="left")
        for col in ("task", "clean-trained", "protected-trained"):
            stl.add_column(col)
        for row in report.tasks:
            stl.add_row(row.task, row.show(row.stl_clean_acc), row.show(row.stl_protected_acc))
        console.print(stl)
    q = report.quality
    if q:
        console.print(f"protected files: max L-inf {q['max_linf_255']}/255, mean PSNR {q['mean_psnr']:.2f} dB, "
                      f"mean SSIM {q['mean_ssim']:.4f} ({q['files']} files)")
    r = report.recipe
    if _seeded(report):
        seeds = r["victim_seeds"]
        console.print(f"[dim]each figure: the mean over {len(seeds)} victims seeded {seeds[0]}-{seeds[-1]} (± their sd); "
                      "the verdict reads the mean[/]")
    console.print(f"victims: {r['victim']} ({r['stem']} stem), {r['epochs']} epochs at {r['res']} px (crop {r['crop']}), "
                  f"batch {r['batch_size']}, {r['weighting']} weighting{', adversarial training' if r['adv_train'] else ''}, "
                  f"on {r['device']}; {report.train_images} training / {report.test_images} clean test images "
                  f"({r['test']}); {report.seconds / 60:.1f} min")
    _render_verdict(report, extra)
    if report.plot:
        console.print(f"plot: {escape(report.plot)}", highlight=False)
    for note in report.notes:  # e.g. pip install "mtlue[plot]": brackets that are not markup
        console.print(f"[yellow]{escape(note)}[/]", highlight=False)


def _render_verdict(report: Any, extra: list[str]) -> None:
    from mtlue_cli.verify.verdict import broken_text, noise_text

    if report.within_noise:
        console.print(f"[yellow]within noise of the threshold (mean less than one seed sd from it; other seeds could "
                      f"turn the verdict): {escape(noise_text(report))}[/]", highlight=False)

    maps = report.dense_threshold is not None
    rule = f"; label maps: keep at most {report.dense_threshold:g} of the clean model's lead" if maps else ""
    if report.effective:
        console.print(f"[bold green]protection effective[/]: every task stays within {report.threshold:g} points of its "
                      f"majority class (or a uniform guess, where higher){rule} when trained on the protected files"
                      + (f", also after {', '.join(extra)}" if extra else ""))
        return
    if report.verdict == "inconclusive" and getattr(report, "sanity", False):
        console.print("[bold yellow]no verdict[/]: the victims trained on mtlue's own predicted labels, not an "
                      "attacker's; pass --labels with the true labels to measure the protection.")
        return
    if report.verdict == "inconclusive":
        console.print(f"[bold yellow]no verdict[/]: the victim trained on the originals did not learn "
                      f"{', '.join(report.unlearned)} either (within {report.threshold:g} points of the baseline"
                      + ("; a label map: no better than no skill" if maps else "") + "), so a low "
                      "score from the protected files proves nothing there. Train the victims longer (--epochs, "
                      "--time-budget), use more images, or check those labels.")
        return
    console.print(f"[bold red]protection NOT effective[/]: above the majority class (or guess) + {report.threshold:g} points"
                  f"{rule.replace('; label maps: keep at most', ' (label maps: a ratio above') + ')' if maps else ''} for "
                  f"{broken_text(report.broken_by)}")
    squeezed = [d for d in report.broken_by if d != "none"]
    if squeezed:
        console.print(f"[yellow]what this means: someone who converts your files ({', '.join(squeezed)}) before "
                      "training learns those tasks anyway. This is a known limit of mtlue's generators at 8/255: on "
                      "UTKFace faces the CPU default holds the mean after each squeeze but gives `age` 6-15 points "
                      "back, and no recipe we measured holds every task under every squeeze yet "
                      "(benchmarks/RESULTS.md).[/]")


def _render_profile(report: Any) -> None:
    profile = report.profile
    if len(profile) < 2:  # defence "none" alone: the main table says it all
        return
    title = "robustness profile (means over the classification tasks; the verdict over every task)"
    table = Table(title=title if len(report.classified) < len(report.tasks) else "robustness profile (means over tasks)",
                  title_justify="left")
    for col in ("defence", "clean-trained", "protected-trained", "verdict"):
        table.add_column(col, justify="right" if col.endswith("trained") else "left")
    for p in profile:
        names = ", ".join(p.broken[:3]) + (f" +{len(p.broken) - 3}" if len(p.broken) > 3 else "")
        table.add_row(p.defense, "—" if p.clean_mean is None else f"{p.clean_mean:.1%}",
                      "—" if p.protected_mean != p.protected_mean else f"{p.protected_mean:.1%}",
                      "[green]holds[/]" if p.verdict == "holds" else f"[red]broken[/]: {names}")
    console.print(table)
    console.print("[dim]clean-trained: what the defence costs a model of the originals; a defence that costs it "
                  "as much as it returns from the protected files gains the attacker nothing"
                  + ("" if all(p.clean_mean is not None for p in profile) else " (— : measured with --profile)")
                  + "[/]")


def _render_detect(detect: Any) -> None:
    table = Table(title="detectability: a linear model on raw pixels, held-out accuracy", title_justify="left")
    for col in ("task", "protected", "epoch", "originals", "epoch", "reading"):
        table.add_column(col, justify="left" if col in ("task", "reading") else "right")
    for row in detect.tasks:
        table.add_row(row.task, f"{row.protected.acc:.1%}", str(row.protected.epoch), f"{row.clean.acc:.1%}",
                      str(row.clean.epoch), "[red]easy to detect[/]" if row.detectable else "[green]not easier[/]")
    console.print(table)
    console.print(escape(detect.summary), highlight=False)


# ----------------------------------------------------------------------------- export and publish
