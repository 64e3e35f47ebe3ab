"""Saving and loading generators: a local folder, a pretrained alias, or a Hugging Face Hub repo id.

The generator itself is written and read with `PyTorchModelHubMixin`'s `save_pretrained` /
`from_pretrained`; this module adds what a folder needs around it (run record, model card), the pinned
aliases and the checks. Only safetensors are ever read (no pickle, no trust_remote_code); config.json is
validated and capped before anything is allocated; tensor names and shapes must match exactly (style rule 6).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mtlue_cli import __version__
from mtlue_cli.config import (
    BOUNDS,
    COLOURS,
    CONDITIONINGS,
    DECORRELATIONS,
    GENERATOR_STEMS,
    MAX_EPSILON,
    STEM_DOWNSAMPLING,
    WIDTHS,
)
from mtlue_cli.errors import MtlueError, WeightsError
from mtlue_cli.files import atomic_write, file_sha256, write_text
from mtlue_cli.models.card import model_card
from mtlue_cli.models.embedding import DENSE_KINDS

WEIGHTS, CONFIG, RECORD, CARD = "model.safetensors", "config.json", "fit_record.json", "README.md"
LABELLER_WEIGHTS, LABELLER_CONFIG = "labeller.safetensors", "labeller.json"  # optional (models.labeller, issue 30)
REPO_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")
MAX_CONFIG_BYTES = 1 << 20
MAX_EMBEDDING_PARAMS = 200_000_000  # a hostile config cannot ask for more than ~800 MB of embeddings


@dataclass
class LoadedGenerator:
    model: Any  # PerturbationGenerator
    source: str  # local | alias | hub
    spec: str
    folder: Path
    revision: str | None
    sha256: str
    metadata: dict[str, str]  # model.weights_metadata(): budget, tasks and provenance (base_method, seed...)
    record: dict[str, Any] | None
    labeller: Any = None  # models.labeller.Labeller saved beside the generator (issue 30), or None

    @property
    def method(self) -> str | None:
        return self.metadata.get("base_method")


def generator_config(generator: Any) -> dict[str, Any]:
    """What config.json holds for `generator` (a PerturbationGenerator): keys sorted, tasks in order."""
    return generator.config


def save_generator(generator: Any, out: Path, method: str | None = None, record: dict[str, Any] | None = None) -> Path:
    """Write a generator folder: `save_pretrained`'s model.safetensors (string metadata naming `method` and the
    run's seed, dataset fingerprint and date) and config.json, the run record, and a model card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = record or {}
    generator.provenance = {
        "base_method": method or "", "seed": str(run.get("config", {}).get("seed", "")),
        "train_dataset_fingerprint": str(run.get("dataset", {}).get("fingerprint", "")),
        "created": str(run.get("created", "")),
    }
    # Written first: save_pretrained keeps an existing README.md instead of generating its own.
    labeller = json.loads((out / LABELLER_CONFIG).read_text()) if (out / LABELLER_CONFIG).is_file() else None
    write_text(out / CARD, model_card(generator.config, generator.weights_metadata(), record, labeller=labeller))
    generator.save_pretrained(out)
    if record is not None:
        write_text(out / RECORD, json.dumps(record, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- validation


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """Types, ranges and size caps of an untrusted config.json."""
    def bad(msg: str) -> WeightsError:
        return WeightsError(f"{where}: invalid generator config: {msg}")

    if not isinstance(config, dict):
        raise bad("not a JSON object")
    allowed = {"tasks", "image_size", "in_channels", "epsilon", "stem", "embed_channels", "unprotected", "conditioning",
               "bound", "width", "decorrelate", "colour", "task_kinds"}
    extra = set(config) - allowed
    if extra:
        raise bad(f"unknown keys {sorted(extra)}")
    tasks = config.get("tasks")
    if not isinstance(tasks, dict) or not 1 <= len(tasks) <= 256:
        raise bad("'tasks' must map 1-256 task names to class lists")
    kinds = config.get("task_kinds") or {}
    if not isinstance(kinds, dict) or any(name not in tasks or kind not in DENSE_KINDS for name, kind in kinds.items()):
        raise bad(f"'task_kinds' must map task names to one of {DENSE_KINDS}")
    total = 0
    for name, classes in tasks.items():
        if kinds.get(name) in ("depth", "normals"):  # a map with no classes, embedded by a small conv net (§8)
            if classes != []:
                raise bad(f"task {name!r} is a {kinds[name]} map: its class list must be empty")
            continue
        if not isinstance(classes, list) or not 2 <= len(classes) <= 4096 or not all(isinstance(c, str) for c in classes):
            raise bad(f"task {name!r} must list 2-4096 class names (strings)")
        if name not in kinds:  # a segmentation task's net is small: no 16*S*S row per class
            total += len(classes)
    size, ch, emb = config.get("image_size", 64), config.get("in_channels", 3), config.get("embed_channels", 16)
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise bad("'image_size' must be an integer in [8, 1024]")
    if ch not in (1, 3):
        raise bad("'in_channels' must be 1 or 3")
    if not isinstance(emb, int) or not 1 <= emb <= 64:
        raise bad("'embed_channels' must be an integer in [1, 64]")
    eps = config.get("epsilon", 8 / 255)
    if not isinstance(eps, (int, float)) or not 0 < eps <= MAX_EPSILON:
        raise bad("'epsilon' must be a number in (0, 64/255]")
    if config.get("bound", "clamp") not in BOUNDS:
        raise bad(f"'bound' must be one of {BOUNDS}")
    if config.get("width", 64) not in WIDTHS:
        raise bad(f"'width' must be one of {WIDTHS}")
    if config.get("decorrelate", "none") not in DECORRELATIONS or config.get("colour", "rgb") not in COLOURS:
        raise bad(f"'decorrelate' must be one of {DECORRELATIONS} and 'colour' one of {COLOURS}")
    if config.get("stem", "cifar") not in GENERATOR_STEMS or config.get("conditioning", "full") not in CONDITIONINGS:
        raise bad(f"'stem' must be one of {GENERATOR_STEMS} and 'conditioning' one of {CONDITIONINGS}")
    unprotected = config.get("unprotected") or []
    if not isinstance(unprotected, list) or any(u not in tasks for u in unprotected):
        raise bad("'unprotected' must list task names")
    latent = size // STEM_DOWNSAMPLING[config.get("stem", "cifar")]
    if total * emb * latent * latent > MAX_EMBEDDING_PARAMS:
        raise bad(f"its embeddings would need {total * emb * latent * latent:,} parameters (cap {MAX_EMBEDDING_PARAMS:,})")
    return config


def load_folder(folder: Path, device: Any = "cpu", expected_sha256: str | None = None) -> tuple[Any, str, dict[str, str]]:
    """Strictly load a generator folder with `from_pretrained`, after checking config.json (caps before anything
    is allocated) and the pinned sha256; returns (model, sha256 of the weights, its safetensors metadata)."""
    from mtlue_cli.models.generator import PerturbationGenerator

    weights, config_path = folder / WEIGHTS, folder / CONFIG
    for needed in (weights, config_path):
        if not needed.is_file():
            others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            hint = " (pickle weights are never loaded; re-export as safetensors)" if any(
                n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in others) else ""
            raise WeightsError(f"{folder}: no {needed.name}; a generator folder holds {WEIGHTS} and {CONFIG}{hint}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{config_path}: config.json over 1 MB; not a generator config")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{config_path}: not valid JSON ({exc})") from None
    validate_config(config, str(config_path))
    digest = file_sha256(weights)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(f"{weights}: sha256 {digest[:12]}... does not match the pinned {expected_sha256[:12]}...; "
                           "the file was modified or corrupted: delete it and download again")
    model = PerturbationGenerator.from_pretrained(folder, map_location=device)
    return model, digest, model.weights_metadata()


# ----------------------------------------------------------------------------- resolution


def registry() -> dict[str, dict[str, Any]]:
    """Aliases from pretrained/registry.json (shipped inside the wheel as mtlue_cli.pretrained)."""
    text = resources.files("mtlue_cli.pretrained").joinpath("registry.json").read_text()
    return json.loads(text)["aliases"]


def _bundled(name: str) -> Path | None:
    folder = resources.files("mtlue_cli.pretrained").joinpath(name)
    path = Path(str(folder))
    return path if path.is_dir() else None


@contextmanager
def upload_errors(repo_id: str, error: type[MtlueError], offline_hint: str) -> Iterator[None]:
    """Turn a failed Hub upload (refused token, network, offline mode) into one clear `error`."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise error(f"the Hub refused the upload to {repo_id} ({status}): set HF_TOKEN or run "
                        "`hf auth login` with a write token") from None
        raise error(f"upload to {repo_id} failed: {exc}") from None
    except (OSError, ValueError) as exc:
        raise error(f"upload to {repo_id} failed: {str(exc).rstrip('.')}. {offline_hint}") from None


def _download(repo_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    """Fetch config.json + model.safetensors with the real hf_hub_download (honours HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        paths = [hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, library_name="mtlue",
                                 library_version=__version__) for name in (CONFIG, WEIGHTS)]
    except RepositoryNotFoundError:
        raise WeightsError(f"Hub repo {repo_id!r} not found (or private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: must come first
        raise WeightsError(f"{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached "
                           "(offline, or HF_HUB_OFFLINE=1); download it on a connected machine first") from None
    except EntryNotFoundError:
        raise WeightsError(f"Hub repo {repo_id!r} has no {WEIGHTS}/{CONFIG}; it is not an mtlue generator") from None
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsError(f"{repo_id}: download failed ({exc}); check the network or use a local folder") from None
    folder = Path(paths[1]).parent
    for name in (LABELLER_CONFIG, LABELLER_WEIGHTS):  # optional: most generators have no labeller
        try:
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, library_name="mtlue",
                            library_version=__version__)
        except EntryNotFoundError:  # no labeller in the repo (or, offline, none in the cache)
            break
        except (HfHubHTTPError, OSError) as exc:  # a failed download is not "no labeller"
            raise WeightsError(f"{repo_id}: download of {name} failed ({exc}); check the network") from None
    return folder


def _labeller(folder: Path, expected_sha256: str | None = None) -> Any:
    """The labeller beside a generator (None without one), checked against its pinned sha256 where there is one."""
    weights = folder / LABELLER_WEIGHTS
    if expected_sha256 is not None and not weights.is_file():
        raise WeightsError(f"{weights}: missing, but the registry pins a labeller for this generator; download it again")
    if expected_sha256 is not None and file_sha256(weights) != expected_sha256:
        raise WeightsError(f"{weights}: sha256 does not match the pinned one; the file was modified or corrupted: "
                           "delete it and download again")
    return load_labeller(folder)


def save_labeller(labeller: Any, folder: Path) -> None:
    """Write a `models.labeller.Labeller` into a generator folder: `labeller.safetensors` and `labeller.json`."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in labeller.state_dict().items()},
                metadata={"format": "pt", "kind": labeller.kind})  # bytes: written atomically with the usual mode
    atomic_write(folder / LABELLER_WEIGHTS, lambda tmp: tmp.write_bytes(blob))
    write_text(folder / LABELLER_CONFIG, json.dumps(labeller.config, indent=2) + "\n")


def load_labeller(folder: Path) -> Any:
    """The labeller saved in a generator folder, or None when it has none. Strict: a file that does not match its
    config is an error, never a partly loaded model."""
    from safetensors.torch import load_file

    from mtlue_cli.models.labeller import Labeller

    folder = Path(folder)
    weights, config = folder / LABELLER_WEIGHTS, folder / LABELLER_CONFIG
    if not weights.is_file() and not config.is_file():
        return None
    if not (weights.is_file() and config.is_file()):
        raise WeightsError(f"{folder}: {LABELLER_WEIGHTS} and {LABELLER_CONFIG} go together; one of them is missing")
    from safetensors import SafetensorError

    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{config}: over {MAX_CONFIG_BYTES} bytes; not a labeller config")
    try:
        labeller = Labeller(**json.loads(config.read_text()))
        labeller.load_state_dict(load_file(str(weights)), strict=True)
    except (ValueError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        raise WeightsError(f"{folder}: the labeller cannot be loaded ({str(exc).splitlines()[0]})") from None
    return labeller.eval()


def load_generator(spec: str, revision: str | None = None, device: Any = "cpu", cache_dir: Path | None = None) -> LoadedGenerator:
    """Load a generator from a local folder, a pretrained alias, or `org/name[@revision]` on the Hub."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"{spec}: a generator is a folder (with {WEIGHTS} and {CONFIG}), not a file")
        model, digest, meta = load_folder(path, device)
        return LoadedGenerator(model, "local", spec, path, None, digest, meta, _record(path), _labeller(path))
    aliases = registry()
    if spec in aliases:
        entry = aliases[spec]
        bundled = _bundled(entry["bundled"]) if entry.get("bundled") else None
        if bundled is None and not entry.get("revision"):
            raise WeightsError(f"alias {spec!r} is not bundled with this install and has no pinned Hub revision")
        folder = bundled or _download(entry["repo_id"], revision or entry["revision"], cache_dir)
        model, digest, meta = load_folder(folder, device, expected_sha256=entry["sha256"])
        return LoadedGenerator(model, "alias", spec, folder, entry["revision"], digest, meta, _record(folder),
                               _labeller(folder, entry.get("labeller_sha256")))
    match = REPO_ID.match(spec)
    if match is None:
        raise WeightsError(f"{spec!r}: no such folder, not a pretrained alias ({', '.join(aliases) or 'none'}), "
                           "and not a Hub repo id (org/name[@revision])")
    first = Path(spec.split("/", 1)[0])
    if not spec.startswith("hf://") and first.is_dir():
        raise WeightsError(f"{spec!r} is ambiguous: the local folder {path} does not exist (though {first}/ does), "
                           f"and it could also be the Hub repo {match.group(1)!r}. Fix the path, or write "
                           f"hf://{spec} to mean the Hub")
    repo_id, rev = match.group(1), revision or match.group(2)
    folder = _download(repo_id, rev, cache_dir)
    model, digest, meta = load_folder(folder, device)
    return LoadedGenerator(model, "hub", spec, folder, rev or "main", digest, meta, _record(folder), _labeller(folder))


def _record(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD
    if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES * 8:
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
