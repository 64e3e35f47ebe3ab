import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtlue_cli.config import FitConfig
from mtlue_cli.data.dataset import MultiTaskImageDataset
from mtlue_cli.data.labels import LabelTable, Record, TaskSpec
from mtlue_cli.errors import ConfigError, Interrupted
from mtlue_cli.fit.loop import fit_generator
from mtlue_cli.models.persistence import load_generator

SPEC = TaskSpec(("shape", "size"), (("a", "b", "c"), ("s", "l")))


def tiny_dataset(n: int = 12, size: int = 16) -> MultiTaskImageDataset:
    gen = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.arange(n) % 3, torch.arange(n) % 2], 1)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    images[:, 0] = (labels[:, 0] * 80).to(torch.uint8)[:, None, None]  # learnable cue per class
    records = [Record(f"{i}.png", tuple(labels[i].tolist()), i + 2) for i in range(n)]
    table = LabelTable(Path("."), SPEC, records, "csv")
    return MultiTaskImageDataset(table, images, labels, records, [])


def quick(**kw) -> FitConfig:
    base = dict(image_size=16, crop=14, batch_size=6, epochs=2, surrogate_epochs=2, sep_every=1,
                checkpoint_every=1, device="cpu", stop_error=0.0)
    base.update(kw)
    return FitConfig(**base)


@pytest.mark.parametrize("method", ["em", "tap", "sep"])
def test_each_method_writes_a_loadable_generator(tmp_path, method):
    cfg = quick(method=method, epochs=4 if method == "sep" else 2)
    result = fit_generator(tiny_dataset(), cfg, tmp_path / "gen")
    assert result.epochs_run == (1 if method == "sep" else 2)  # SEP's compressed schedule: epochs / 4 (§4.4)
    assert len(result.history) == result.epochs_run and len(result.attacked_train_acc) == 2
    for name in ("model.safetensors", "config.json", "README.md", "fit_record.json"):
        assert (tmp_path / "gen" / name).is_file()
    record = json.loads((tmp_path / "gen" / "fit_record.json").read_text())
    assert record["config"]["method"] == method and len(record["dataset"]["fingerprint"]) == 64
    loaded = load_generator(str(tmp_path / "gen"))
    assert loaded.method == method and loaded.model.tasks == SPEC.to_dict()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([[0, 1], [2, 0]])
    assert loaded.model(x, y).abs().max() <= 8 / 255


def test_resume_continues_where_it_stopped(tmp_path):
    ds = tiny_dataset()
    fit_generator(ds, quick(method="tap", epochs=1), tmp_path / "gen")
    result = fit_generator(ds, quick(method="tap", epochs=3, resume=True), tmp_path / "gen")
    assert result.epochs_run == 3 and [h["epoch"] for h in result.history] == [1, 2, 3]


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path):
    calls = {"n": 0}

    def interrupt(kind, info):
        if kind == "progress" and info.get("stage") == "generator":
            calls["n"] += 1
            if calls["n"] == 3:  # during epoch 2
                raise KeyboardInterrupt

    ds = tiny_dataset()
    with pytest.raises(Interrupted, match="--resume"):
        fit_generator(ds, quick(method="em", epochs=3), tmp_path / "gen", on_event=interrupt)
    assert (tmp_path / "gen" / "checkpoint" / "state.pt").is_file()
    result = fit_generator(ds, quick(method="em", epochs=3, resume=True), tmp_path / "gen")
    assert result.epochs_run == 3


def test_bad_options_are_usage_errors(tmp_path):
    ds = tiny_dataset()
    with pytest.raises(ConfigError, match="--method"):
        fit_generator(ds, quick(method="pgd"), tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown task"):
        fit_generator(ds, quick(unprotected=("colour",)), tmp_path / "b")
    with pytest.raises(ConfigError, match="every task"):
        fit_generator(ds, quick(unprotected=("shape", "size")), tmp_path / "c")
    with pytest.raises(ConfigError, match="--resume"):
        fit_generator(ds, quick(resume=True, method="em"), tmp_path / "d")


def test_sep_computing_delta_once_matches_the_official_gradient():
    """§11/§14.1: δ once + losses summed over checkpoints + regularisers x n_ckpt has the official gradient."""
    from mtlue_cli.fit.loop import _sep_recompute
    from mtlue_cli.fit.losses import embedding_regulariser, sep_loss
    from mtlue_cli.models.classifiers import MTLClassifier
    from mtlue_cli.models.generator import PerturbationGenerator

    torch.manual_seed(0)
    g = PerturbationGenerator(SPEC.to_dict(), image_size=16, epsilon=0.5)
    surrogates = [MTLClassifier([3, 2], stem="cifar", image_size=16).eval() for _ in range(3)]
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0]])

    def perturbed(x, y, m):
        return (x + m(x, y)).clamp(0, 1)

    g.eval()  # BN in eval: the passes see identical statistics, so the gradients must agree exactly
    ctx = SimpleNamespace(maps=lambda targets: None, kinds=[3, 2])  # the FitContext parts a classification step reads
    _sep_recompute(ctx, g, g, surrogates, x, y, y, embedding_regulariser)
    official = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    xp = perturbed(x, y, g)
    loss = sep_loss([s(xp) for s in surrogates], y, [3, 2]) + 3 * embedding_regulariser(g.embedding_weights())
    loss.backward()
    for a, p in zip(official, g.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4)



def test_time_budget_bounds_the_schedule_and_each_epoch_reports_the_attack(tmp_path):
    events = []
    tight = fit_generator(tiny_dataset(), quick(method="tap", epochs=20, time_budget=1e-3), tmp_path / "a",
                          on_event=lambda kind, info: events.append((kind, info)))
    assert tight.epochs_run == 1  # the budget leaves no room for a second epoch
    epochs = [info for kind, info in events if kind == "epoch"]
    assert [e["epoch"] for e in epochs] == [1] and epochs[0]["of"] == 1
    assert 0 <= epochs[0]["attacked_acc"] <= 1 and epochs[0]["clean_acc"] is not None
    roomy = fit_generator(tiny_dataset(), quick(method="tap", epochs=3, time_budget=3600.0), tmp_path / "b")
    assert roomy.epochs_run == 3  # the epoch cap still holds


def test_the_time_budget_plan_follows_the_speed_until_the_first_lr_drop(tmp_path, monkeypatch):
    import mtlue_cli.fit.loop as fit_module

    # A fake clock: the first epoch takes 100 s (another job shared the CPU), every later one 10 s.
    clock, real_epoch = [0.0], fit_module._generator_epoch

    def epoch(*args, **kwargs):
        clock[0] += 100.0 if clock[0] < 100 else 10.0
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(fit_module, "time", SimpleNamespace(perf_counter=lambda: clock[0], strftime=time.strftime,
                                                            gmtime=time.gmtime))
    monkeypatch.setattr(fit_module, "_generator_epoch", epoch)
    logs = []
    result = fit_generator(tiny_dataset(), quick(method="tap", epochs=12, time_budget=1000.0), tmp_path / "gen",
                           on_event=lambda kind, info: logs.append(info.get("message", "")) if kind == "log" else None)
    plans = [m for m in logs if m.startswith("--time-budget")]
    assert "9 generator epochs" in plans[0]  # 900 s left at 100 s each, one kept back
    assert "12 generator epochs" in plans[1] and "re-planned" in plans[1]  # the cap, now that epochs take 10 s
    assert result.epochs_run == 12 and len(plans) == 2


def test_stop_on_collapse_and_robust_training(tmp_path):
    result = fit_generator(tiny_dataset(), quick(method="tap", epochs=5, stop_acc=1.0, bound="tanh",
                                                 robust=("grayscale", "jpeg", "bits", "blur"), robust_surrogate=True),
                           tmp_path / "gen")
    assert result.epochs_run == 1 and result.stopped_early and "collapsed" in result.stop_reason


def test_paired_surrogates_train_both(tmp_path):
    events = []
    fit_generator(tiny_dataset(), quick(method="tap", epochs=1, bound="tanh", robust=("identity", "grayscale"),
                                        robust_surrogate=True, paired_surrogates=True), tmp_path / "gen",
                  on_event=lambda kind, info: events.append((kind, info)))
    saved = torch.load(tmp_path / "gen" / "checkpoint" / "surrogate.pt", weights_only=True)
    assert set(saved) == {"clean", "squeezed"}
    assert [i["description"] for k, i in events if k == "start" and i.get("stage") == "surrogate"] == [
        "Clean surrogate", "Squeezed surrogate"]


def test_method_rows_carry_every_difference_between_the_methods():
    from mtlue_cli.fit import surrogate
    from mtlue_cli.fit.methods import METHODS

    em, tap, sep = METHODS["em"], METHODS["tap"], METHODS["sep"]
    assert (em.surrogates, tap.surrogates, sep.surrogates) == (surrogate.fresh, surrogate.final, surrogate.checkpoints)
    assert [m.scheduler_steps for m in (em, tap, sep)] == [1, 1, 4]  # §4.4: SEP's compressed schedule
    assert [m.augment for m in (em, tap, sep)] == [True, True, False]
    # §14.1: with δ computed once, SEP weighs the regularisers by its checkpoints; recomputed, once per pass.
    assert (sep.regulariser_scale(15, recompute=False), sep.regulariser_scale(15, recompute=True)) == (15.0, 1.0)
    assert em.regulariser_scale(15, recompute=False) == tap.regulariser_scale(15, recompute=False) == 1.0
    y = torch.tensor([[0, 1], [2, 0]])
    assert torch.equal(em.stop_target(y, [3, 2]), y)
    assert tap.stop_target(y, [3, 2]).tolist() == sep.stop_target(y, [3, 2]).tolist() == [[1, 0], [0, 1]]


def test_informed_options_fit_save_and_reload(tmp_path):
    cfg = quick(method="tap", epochs=1, bound="tanh", decorrelate="shift-zm", colour="luma",
                robust=("identity", "ueraser"))
    fit_generator(tiny_dataset(), cfg, tmp_path / "gen")
    loaded = load_generator(str(tmp_path / "gen"))
    assert loaded.model.decorrelate == "shift-zm" and loaded.model.colour == "luma"  # config.json carries them
    delta = loaded.model(torch.rand(2, 3, 16, 16), torch.tensor([[0, 1], [2, 0]]))
    assert torch.equal(delta[:, 0], delta[:, 2]) and delta.abs().max() <= 8 / 255


def test_class_mean_penalty_is_added_over_the_class_tasks(monkeypatch, tmp_path):
    import mtlue_cli.fit.loop as loop_module

    seen = []
    real = loop_module.class_mean_penalty

    def spy(delta, labels, num_classes, epsilon):
        seen.append((tuple(delta.shape), labels.shape[1], list(num_classes), epsilon))
        return real(delta, labels, num_classes, epsilon)

    monkeypatch.setattr(loop_module, "class_mean_penalty", spy)
    fit_generator(tiny_dataset(), quick(method="tap", epochs=1), tmp_path / "off")
    assert seen == []  # the paper's loss by default (class_mean=0)
    fit_generator(tiny_dataset(), quick(method="tap", epochs=1, class_mean=10.0), tmp_path / "on")
    assert seen and seen[0][1:] == (2, [3, 2], 8 / 255) and seen[0][0][1:] == (3, 16, 16)
    with pytest.raises(ConfigError):
        quick(class_mean=-1.0)


def test_op_squeeze_is_refitted_each_epoch_and_passes_gradient(monkeypatch, tmp_path):
    import mtlue_cli.fit.projection as projection_module
    from mtlue_cli.fit.squeezes import random_squeeze

    assert random_squeeze(("op",), torch.Generator())[0] == "identity"  # no projection yet: unsqueezed
    fits = []
    real = projection_module.fit_projection
    monkeypatch.setattr(projection_module, "fit_projection", lambda *a, **k: fits.append(len(a[0])) or real(*a, **k))
    cfg = FitConfig(image_size=16, crop=14, batch_size=6, epochs=2, surrogate_epochs=1, device="cpu", stop_error=0.0,
                    bound="tanh", robust=("op",))
    fit_generator(tiny_dataset(), cfg, tmp_path / "gen")
    assert fits == [12, 12]  # after each epoch, on every image's x+δ
