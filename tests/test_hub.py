"""Saving, loading (folder / alias / Hub cache, offline), config validation and export."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import mtlue_cli.models.persistence as hub
from mtlue_cli.errors import ConfigError, WeightsError
from mtlue_cli.hub.export import export_generator
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_folder, load_generator, save_generator, validate_config

TASKS = {"shape": ["c", "a", "b"], "size": ["s", "l"]}  # deliberately not sorted
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "tiny-gen"
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=16), folder, method="tap")
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.tensor([[0, 0], [1, 1], [2, 0], [1, 0]])
    with torch.no_grad():
        return model.eval()(x, y)


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- folder round trip


def test_save_load_folder_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = PerturbationGenerator(tasks=TASKS, image_size=16)
    folder = save_generator(model, tmp_path / "g", method="tap")
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    loaded = load_generator(str(folder))
    assert loaded.source == "local" and loaded.method == "tap"
    assert loaded.sha256 == _digest(folder / "model.safetensors")
    _same_weights(model, loaded.model)
    out = _outputs(loaded.model)
    assert torch.equal(_outputs(model), out)
    assert out.abs().max() <= 8 / 255 + 1e-7 and out.abs().max() > 0
    config = json.loads((folder / "config.json").read_text())
    assert list(config["tasks"]) == ["shape", "size"]
    assert config["tasks"]["shape"] == ["c", "a", "b"]
    assert loaded.model.tasks == {"shape": ["c", "a", "b"], "size": ["s", "l"]}


def test_pinned_sha256_detects_tampering(tmp_path: Path, gen_dir: Path) -> None:
    folder = tmp_path / "g"
    shutil.copytree(gen_dir, folder)
    digest = _digest(folder / "model.safetensors")
    load_folder(folder, expected_sha256=digest)  # the right pin loads
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # flip one bit in the last tensor's data: still a valid safetensors file
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_folder(folder, expected_sha256=digest)


# ----------------------------------------------------------------------------- alias and Hub cache


@pytest.fixture
def hub_cache(tmp_path: Path, gen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A standard huggingface_hub cache holding org/tiny at REV, with the Hub unreachable."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(gen_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    digest = _digest(gen_dir / "model.safetensors")
    monkeypatch.setattr(hub, "registry", lambda: {"tiny": {
        "repo_id": "org/tiny", "revision": REV, "sha256": digest, "bundled": None, "image_size": 16, "tasks": TASKS}})
    return cache


def test_alias_and_repo_id_load_from_hub_cache(hub_cache: Path, gen_dir: Path) -> None:
    local = load_generator(str(gen_dir))
    by_alias = load_generator("tiny")
    assert by_alias.source == "alias" and by_alias.revision == REV
    assert by_alias.folder.resolve() == (hub_cache / "models--org--tiny" / "snapshots" / REV).resolve()
    by_repo = load_generator(f"org/tiny@{REV}", cache_dir=hub_cache)
    assert by_repo.source == "hub" and by_repo.revision == REV
    by_main = load_generator("org/tiny")  # a branch name, resolved offline through refs/main
    for other in (by_alias, by_repo, by_main):
        assert other.sha256 == local.sha256
        _same_weights(local.model, other.model)
        assert torch.equal(_outputs(local.model), _outputs(other.model))


def test_alias_with_wrong_pin_refused(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dict(hub.registry()["tiny"], sha256="0" * 64)
    monkeypatch.setattr(hub, "registry", lambda: {"tiny": entry})
    with pytest.raises(WeightsError, match="pinned"):
        load_generator("tiny")


def test_missing_repo_offline_is_weights_error(hub_cache: Path) -> None:
    for spec in ("org/absent", "org/tiny@" + "f" * 40):
        with pytest.raises(WeightsError, match="org/"):
            load_generator(spec)


def test_missing_repo_offline(hub_cache: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_generator("org/absent")
    assert "offline" in str(info.value) and "cache" in str(info.value)
    with pytest.raises(WeightsError, match="offline"):
        load_generator("org/tiny@" + "f" * 40)  # a revision that is not in the cache


# ----------------------------------------------------------------------------- hostile configs


def _good_config() -> dict:
    return {"tasks": {"shape": ["a", "b", "c"], "size": ["s", "l"]}, "image_size": 16, "in_channels": 3,
            "epsilon": 8 / 255, "stem": "cifar", "embed_channels": 16, "conditioning": "full"}


@pytest.mark.parametrize("change", [
    {"image_size": 1 << 20},
    {"image_size": "16"},
    {"tasks": {"t": [f"c{i}" for i in range(10**6)]}},
    {"tasks": {"t": ["a", "b"]}, "image_size": 1024, "embed_channels": 64, "stem": "cifar"} | {"tasks": {f"t{i}": ["a", "b"] for i in range(256)}},
    {"trust_remote_code": True},
    {"tasks": ["shape"]},
    {"tasks": {"shape": ["a", 1]}},
    {"tasks": {"shape": ["only"]}},
    {"epsilon": 0.5},
    {"epsilon": "8/255"},
    {"epsilon": 0},
    {"in_channels": 4},
    {"embed_channels": 1000},
    {"stem": "vit"},
    {"unprotected": ["nope"]},
])
def test_validate_config_rejects(change: dict) -> None:
    with pytest.raises(WeightsError, match="invalid generator config"):
        validate_config({**_good_config(), **change}, "config.json")


def test_validate_config_accepts_good() -> None:
    assert validate_config(_good_config(), "config.json") == _good_config()
    with pytest.raises(WeightsError):
        validate_config([1, 2], "config.json")


def test_shape_mismatch_refused_before_load(tmp_path: Path) -> None:
    folder = save_generator(PerturbationGenerator(tasks={"shape": ["a", "b"]}, image_size=16), tmp_path / "g")
    config = json.loads((folder / "config.json").read_text())
    config["tasks"] = {"shape": ["a", "b", "c"]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="do not match config.json"):
        load_folder(folder)


def test_pickle_only_folder_refused(tmp_path: Path, gen_dir: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(gen_dir / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(WeightsError, match="pickle"):
        load_generator(str(folder))


def test_random_bytes_safetensors_refused(tmp_path: Path, gen_dir: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    shutil.copyfile(gen_dir / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(WeightsError, match="safetensors"):
        load_generator(str(folder))


def test_config_not_json_or_file_spec(tmp_path: Path, gen_dir: Path) -> None:
    folder = tmp_path / "g"
    shutil.copytree(gen_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="JSON"):
        load_generator(str(folder))
    with pytest.raises(WeightsError, match="folder"):
        load_generator(str(gen_dir / "model.safetensors"))


# ----------------------------------------------------------------------------- spec resolution


def test_ambiguous_spec_names_both_readings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "_download", lambda *a, **k: pytest.fail("must not go to the Hub"))
    with pytest.raises(WeightsError) as info:
        load_generator("runs/missing")
    message = str(info.value)
    assert "ambiguous" in message and "runs" in message and "hf://runs/missing" in message


def test_plain_missing_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "_download", lambda *a, **k: pytest.fail("must not go to the Hub"))
    with pytest.raises(WeightsError, match="no such folder"):
        load_generator("no such thing")


# ----------------------------------------------------------------------------- export


def test_export_writes_card_with_verify_table(tmp_path: Path, gen_dir: Path) -> None:
    loaded = load_generator(str(gen_dir))
    report = tmp_path / "verify.json"
    report.write_text(json.dumps({"tasks": [
        {"task": "shape", "clean_acc": 0.9, "protected_acc": 0.35, "majority": 0.34},
        {"task": "size", "clean_acc": 0.8, "protected_acc": 0.5, "majority": 0.5}], "recipe": {"epochs": 2}}))
    to = export_generator(loaded, tmp_path / "export", verify_report=report)
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in to.iterdir()}
    assert _digest(to / "model.safetensors") == loaded.sha256
    card = (to / "README.md").read_text()
    front = card.split("---\n")[1]
    fields = {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in front.splitlines()}
    assert fields["library_name"] == "mtlue"
    assert fields["mtlue"]["tasks"] == TASKS
    assert "| shape | 90.0% | 35.0% | 34.0% |" in card
    assert "| size | 80.0% | 50.0% | 50.0% |" in card
    # The exported folder loads as a generator.
    assert load_generator(str(to)).sha256 == loaded.sha256


def test_export_refuses_non_empty_target(tmp_path: Path, gen_dir: Path) -> None:
    loaded = load_generator(str(gen_dir))
    to = tmp_path / "export"
    to.mkdir()
    (to / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_generator(loaded, to)
    assert (to / "keep.txt").read_text() == "mine" and not (to / "README.md").exists()
    export_generator(loaded, to, overwrite=True)
    assert (to / "README.md").is_file()


def test_export_and_push_loads_once_exports_once_and_pushes_the_folder(monkeypatch, tmp_path: Path) -> None:
    import mtlue_cli.hub.export as export

    loaded = object()
    calls: dict[str, list] = {"load": [], "export": [], "push": []}
    monkeypatch.setattr(export, "load_generator", lambda *a, **k: calls["load"].append((a, k)) or loaded)
    monkeypatch.setattr(export, "export_generator", lambda *a, **k: calls["export"].append((a, k)) or Path(a[1]))
    monkeypatch.setattr(export, "push_generator", lambda *a, **k: calls["push"].append((a, k)) or "https://hub/commit")
    cfg = export.ExportConfig("demo-shapes", to=tmp_path / "to", overwrite=True, revision="v1")
    report = export.export_and_push(cfg)
    assert calls["load"] == [(("demo-shapes",), {"revision": "v1"})] and calls["push"] == []
    assert calls["export"] == [((loaded, tmp_path / "to", None, True), {})]
    assert report == export.ExportReport(tmp_path / "to")

    events: list = []
    report = export.export_and_push(export.ExportConfig("demo-shapes", push="me/x", revision="dev"),
                                    on_event=lambda kind, info: events.append(info["message"]))
    assert calls["load"][-1] == (("demo-shapes",), {"revision": None})  # with --push, --revision is the branch
    pushed = calls["push"][0][0][0]
    assert pushed.name.startswith("mtlue-export-") and report.url == "https://hub/commit"
    assert calls["push"] == [((pushed, "me/x"), {"private": False, "revision": "dev"})]
    assert events == [f"generator exported to {pushed}; uploading it to me/x"]
    assert report.folder is None and not pushed.exists()  # the temporary folder is gone once pushed

    def fail(*a, **k):
        raise WeightsError("no network")

    monkeypatch.setattr(export, "push_generator", fail)
    with pytest.raises(WeightsError):
        export.export_and_push(export.ExportConfig("demo-shapes", push="me/x"), on_event=lambda kind, info: events.append(info["message"]))
    kept = Path(events[-1].split("generator exported to ")[1].split(";")[0])
    assert kept.is_dir()  # a failed upload keeps what was exported, at the path the event named
    kept.rmdir()
    with pytest.raises(ConfigError, match="--to DIR and/or --push"):
        export.ExportConfig("demo-shapes")


# ----------------------------------------------------------------------------- the mixin's public API


def test_task_order_survives_save_load_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(4)
    tasks = {"zeta": ["z2", "z1"], "alpha": ["b", "a", "c"], "mid": ["y", "n"]}  # neither sorted nor reverse-sorted
    first = save_generator(PerturbationGenerator(tasks=tasks, image_size=16), tmp_path / "a", method="sep")
    config = json.loads((first / "config.json").read_text())
    assert list(config["tasks"]) == ["zeta", "alpha", "mid"] and config["tasks"]["alpha"] == ["b", "a", "c"]
    assert list(config) == sorted(config)  # the other keys sorted, as the mixin writes them
    loaded = load_generator(str(first))
    assert list(loaded.model.tasks) == ["zeta", "alpha", "mid"] and loaded.model.num_classes == [2, 3, 2]
    assert loaded.method == "sep" and loaded.model.provenance["base_method"] == "sep"
    # The mixin's own entry points, as a user of the library calls them, keep it too.
    loaded.model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "config.json").read_text() == (first / "config.json").read_text()
    again = PerturbationGenerator.from_pretrained(tmp_path / "b")
    assert list(again.tasks) == ["zeta", "alpha", "mid"] and again.provenance["base_method"] == "sep"
    _same_weights(loaded.model, again)
    assert capsys.readouterr().out == ""  # the library never prints (the mixin's loader would)


def test_bundled_generators_load_unchanged_and_save_their_own_config(tmp_path: Path) -> None:
    for alias, entry in hub.registry().items():
        if not entry.get("bundled"):
            continue
        loaded = load_generator(alias)  # checks the pinned sha256 of the bundled weights
        assert loaded.sha256 == entry["sha256"]
        assert list(loaded.model.tasks) == list(entry["tasks"])
        loaded.model.save_pretrained(tmp_path / alias)
        saved = json.loads((tmp_path / alias / "config.json").read_text())
        assert json.loads((loaded.folder / "config.json").read_text()) == saved
        assert list(saved["tasks"]) == list(entry["tasks"])


def test_from_pretrained_reads_a_hub_repo_offline(hub_cache: Path, gen_dir: Path) -> None:
    model = PerturbationGenerator.from_pretrained("org/tiny", revision=REV)
    assert list(model.tasks) == list(TASKS) and not model.training
    _same_weights(load_generator(str(gen_dir)).model, model)


def test_from_pretrained_never_falls_back_to_pickle(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import EntryNotFoundError

    snapshot = hub_cache / "models--org--tiny" / "snapshots" / REV
    (snapshot / "model.safetensors").unlink()
    (snapshot / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("pickle must never be loaded"))
    with pytest.raises(EntryNotFoundError):  # LocalEntryNotFoundError offline: no model.safetensors
        PerturbationGenerator.from_pretrained("org/tiny", revision=REV)
