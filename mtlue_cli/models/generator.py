"""The MTL-UE perturbation generator G(x, y) = Clip(D([e^1_{y^1}, ..., e^K_{y^K}, E(x)]), -eps, eps).

Architecture follows method-spec §2 exactly (the official `ResNetDAE`), with dense tasks as §8 describes them
(`models.embedding`: a label-embedding net per dense task in place of the class-embedding table), and with two
deliberate differences: the clamp is at `epsilon` itself (8/255 by default) instead of the official 0.0314
(§2.3, §13.3), and config.json keeps the user's task order (the mixin would sort it).

Saved and loaded with `PyTorchModelHubMixin`'s `save_pretrained` / `from_pretrained`; this class only
supplies the framework hooks: strict safetensors with string metadata, and config.json in task order.
"""

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from mtlue_cli import __version__
from mtlue_cli.config import BOUNDS, COLOURS, CONDITIONINGS, DECORRELATIONS, GENERATOR_STEMS, STEM_DOWNSAMPLING, WIDTHS
from mtlue_cli.errors import WeightsError
from mtlue_cli.files import atomic_write, write_text
from mtlue_cli.models.delta import decorrelate, image_code  # noqa: F401 (image_code: re-exported)
from mtlue_cli.models.embedding import (
    LabelEmbedding,
    check_tasks,
    label_columns,
    maps_by_name,
)

# How a generator was made: kept in model.safetensors' string metadata next to the fields derived from the model.
PROVENANCE = ("base_method", "seed", "train_dataset_fingerprint", "created")


def _encoder(in_channels: int, stem: str, width: int = 64) -> nn.Sequential:
    # ResNet-18 up to layer2 = "stem_end_block = 9" convs (§2.1); layer3/4 are never used upstream.
    # width 64 is the paper's; a narrower one keeps the layout at about (width/64)^2 the cost (measured weaker).
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if stem == "cifar":
        layers["conv1"] = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        layers["conv1"] = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    layers["bn1"] = nn.BatchNorm2d(width)
    layers["relu"] = nn.ReLU(inplace=True)
    if stem == "imagenet":
        layers["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    layers["layer1"] = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
    downsample = nn.Sequential(
        nn.Conv2d(width, 2 * width, kernel_size=1, stride=2, bias=False),
        nn.BatchNorm2d(2 * width),
    )
    layers["layer2"] = nn.Sequential(
        BasicBlock(width, 2 * width, stride=2, downsample=downsample),
        BasicBlock(2 * width, 2 * width),
    )
    return nn.Sequential(layers)


def _decoder(in_channels: int, out_channels: int, stem: str, width: int = 64) -> nn.Sequential:
    # §2.3: no activation after the first ConvT and none on the output (the official sigmoid is
    # commented out); InstanceNorm without affine or running stats.
    # The ImageNet stem shrinks 8x, so layers 3 and 4 upsample too; the CIFAR stem only 2x.
    if stem == "imagenet":
        up_last = dict(kernel_size=4, stride=2, padding=1)
    else:
        up_last = dict(kernel_size=3, stride=1, padding=1)
    # Layers 2 and 3 keep their bias although the InstanceNorm right after cancels it (its gradient
    # is zero): "all ConvT layers have a bias" upstream, and the parameter layout stays the same.
    half = width // 2
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, width, kernel_size=4, stride=2, padding=1),
        nn.ConvTranspose2d(width, width, kernel_size=3, stride=1, padding=1),
        nn.InstanceNorm2d(width, affine=False),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(width, half, **up_last),
        nn.InstanceNorm2d(half, affine=False),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(half, out_channels, **up_last),
    )


class PerturbationGenerator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="mtlue",
    tags=["unlearnable-examples", "mtl-ue", "data-protection"],
    paper_url="https://arxiv.org/abs/2505.05279",
    repo_url="https://github.com/mtlue/mtlue",
):
    """Label-conditioned generator of L-inf-bounded perturbations (MTL-UE, method-spec §2).

    Args:
        tasks: task name -> class names, in order; the dict order is the task order and the list
            order the class index.
        image_size: side H = W of the square images G works on.
        in_channels: 3 (RGB) or 1 (grey, ChestX-ray14).
        epsilon: L-inf bound of the perturbation, in [0, 1] pixel units.
        stem: "cifar" (3x3/1 conv, no max-pool, S = H/2) or "imagenet" (7x7/2 + max-pool, S = H/8).
        embed_channels: channels d_e of each task's class embedding (16 in the paper).
        unprotected: tasks left learnable: their embedding is the mean over classes (§2.4).
        conditioning: "full" (embeddings and z), "classwise" (embeddings only) or "z_only" (§2.2).
        bound: "clamp" (the paper's hard ±ε, §2.3) or "tanh" (ε·tanh, gradient on every pixel).
        width: channels of the encoder's first stage (64 = the paper's; z has 2*width channels and the
            decoder width and width/2). 32 costs about a quarter of the paper's MACs (method-spec §14.3).
        decorrelate: "none" (the paper), "shift" or "shift-zm": see `decorrelate`.
        colour: "rgb" (the paper) or "luma": the channels' mean on every channel (deviation from §2.3, issue 29).
            An equal change of R, G and B is left as it is by grayscale (its weights sum to 1) and by a channel
            shuffle, the two colour squeezes that erase a colour-coded shortcut.
        task_kinds: the dense tasks' kinds, task name -> "segmentation", "depth" or "normals" (§8); every task
            not named is a classification task. A segmentation task lists its class names in `tasks`, a depth
            or normals task an empty list. A dense task's embedding comes from its label map (`forward`'s
            `maps`) through a `LabelEmbedding` net. None or {} (the default): classification only, exactly the
            generator of the §2 layout.
    """

    def __init__(
        self,
        tasks: dict[str, list[str]],
        image_size: int = 64,
        in_channels: int = 3,
        epsilon: float = 8 / 255,
        stem: str = "cifar",
        embed_channels: int = 16,
        unprotected: list[str] | None = None,
        conditioning: str = "full",
        bound: str = "clamp",
        width: int = 64,
        decorrelate: str = "none",
        colour: str = "rgb",
        task_kinds: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        task_kinds = dict(task_kinds or {})
        tasks = check_tasks(tasks, task_kinds)
        if stem not in GENERATOR_STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(GENERATOR_STEMS)}")
        if bound not in BOUNDS:
            raise ValueError(f"unknown bound {bound!r}: use one of {', '.join(BOUNDS)}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}: use one of {', '.join(CONDITIONINGS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        if decorrelate not in DECORRELATIONS:
            raise ValueError(f"unknown decorrelate {decorrelate!r}: use one of {', '.join(DECORRELATIONS)}")
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}: use one of {', '.join(COLOURS)}")
        if width not in WIDTHS:
            raise ValueError(f"width must be one of {', '.join(map(str, WIDTHS))}, got {width}")
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must lie in (0, 1) (pixel units, e.g. 8/255), got {epsilon}")
        if embed_channels < 1:
            raise ValueError(f"embed_channels must be a positive integer, got {embed_channels}")
        factor = STEM_DOWNSAMPLING[stem]
        if image_size < factor or image_size % factor:
            raise ValueError(
                f"image_size {image_size} does not suit the {stem!r} stem: it must be a positive multiple of "
                f"{factor}, because the decoder has to upsample z back to exactly the input size"
            )
        unprotected = list(unprotected or [])
        unknown = [name for name in unprotected if name not in tasks]
        if unknown:
            raise ValueError(f"unprotected names unknown tasks {unknown}; the tasks are {list(tasks)}")

        self.tasks = tasks
        self.image_size = image_size
        self.in_channels = in_channels
        self.epsilon = float(epsilon)
        self.stem = stem
        self.embed_channels = embed_channels
        self.unprotected = unprotected
        self.conditioning = conditioning
        self.bound = bound
        self.width = width
        self.decorrelate = decorrelate
        self.colour = colour
        self.task_kinds = {name: task_kinds[name] for name in tasks if name in task_kinds}  # in task order
        self.provenance: dict[str, str] = {}  # PROVENANCE keys; written to and read from model.safetensors

        size = self.latent_size
        # Parts that the chosen conditioning never reads are not built, so every parameter that
        # exists gets a gradient (style rule 10).
        self.encoder = _encoder(in_channels, stem, width) if conditioning != "classwise" else None
        self.embeddings = nn.ModuleList(
            []
            if conditioning == "z_only"
            # PyTorch's default N(0, 1) init, as upstream (§2.2); one row of 16*S*S per class. Dense tasks: §8's net.
            else [LabelEmbedding(self.task_kinds[name], len(classes), embed_channels, factor) if name in self.task_kinds
                  else nn.Embedding(len(classes), embed_channels * size * size) for name, classes in tasks.items()]
        )
        decoder_in = {
            "full": embed_channels * len(tasks) + 2 * width,
            "classwise": embed_channels * len(tasks),
            "z_only": 2 * width,
        }[conditioning]
        self.decoder = _decoder(decoder_in, in_channels, stem, width)

    @property
    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this generator, as config.json holds them: keys sorted, tasks in order.
        `decorrelate`, `colour` and `task_kinds` appear only when set, so the paper's generators keep the config.json they always had."""
        config = {
            "bound": self.bound,
            "conditioning": self.conditioning,
            "embed_channels": self.embed_channels,
            "epsilon": self.epsilon,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "stem": self.stem,
            "tasks": {name: list(classes) for name, classes in self.tasks.items()},
            "unprotected": list(self.unprotected),
            "width": self.width,
        }
        if self.decorrelate != "none":
            config["decorrelate"] = self.decorrelate
        if self.colour != "rgb":
            config["colour"] = self.colour
        if self.task_kinds:  # absent for classification only, so those config.json files stay as they were
            config["task_kinds"] = dict(self.task_kinds)
        return dict(sorted(config.items()))

    def weights_metadata(self) -> dict[str, str]:
        """The string metadata of model.safetensors: the format, budget and tasks, then `provenance`."""
        return {
            "format": "pt", "mtlue_version": __version__, "format_version": "1",
            "epsilon": repr(self.epsilon), "epsilon_255": f"{self.epsilon * 255:.4g}/255", "norm": "linf",
            "input_resolution": str(self.image_size), "tasks": json.dumps(self.config["tasks"]),
            **({"task_kinds": json.dumps(self.task_kinds)} if self.task_kinds else {}),
            **{key: str(self.provenance.get(key, "")) for key in PROVENANCE},
        }

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def num_classes(self) -> list[int]:
        return [len(classes) for classes in self.tasks.values()]

    @property
    def latent_size(self) -> int:
        """Spatial side S of z and of each reshaped embedding."""
        return self.image_size // STEM_DOWNSAMPLING[self.stem]

    @property
    def dense_tasks(self) -> list[str]:
        """Names of the dense tasks (label maps, §8), in task order."""
        return list(self.task_kinds)

    def embedding_weights(self) -> list[Tensor]:
        """The raw class-embedding tables, one (C_k, embed_channels*S*S) per classification task (empty for
        z_only). Dense tasks' label-embedding nets are left out: they have no embedding regulariser (§8)."""
        return [embedding.weight for embedding in self.embeddings if isinstance(embedding, nn.Embedding)]

    def forward(self, x: Tensor, labels: Tensor, protect: list[str] | None = None,
                maps: Sequence[Tensor | None] | Mapping[str, Tensor] | None = None) -> Tensor:
        """Perturbations delta for images x (B, C, H, W) in [0, 1] with labels (B, K) class indices.

        protect: names of the tasks to protect in this call; None means every task not listed in
        `unprotected`. Unprotected tasks get the label-independent mean embedding (§2.4); an unprotected
        dense task the embedding of an all-invalid map.
        maps: the dense tasks' label maps at the image size, one per task in task order with None for the
            classification tasks (or a mapping dense task name -> map): segmentation (B, H, W) class indices,
            anything outside [0, C) ignored; depth (B, 1, H, W), 0 = invalid, any unit; normals (B, 3, H, W),
            the zero vector invalid (`embedding.dense_input`). Only needed with dense tasks, and only for
            those protected in this call. With dense tasks, `labels` has a column per task (the dense tasks'
            columns are not read) or one per classification task only.
        """
        batch = x.shape[0]
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        columns = label_columns(list(self.tasks), self.task_kinds, labels, batch)
        by_name = maps_by_name(list(self.tasks), self.task_kinds, maps)
        if protect is None:
            unprotected = set(self.unprotected)
        else:
            unknown = [name for name in protect if name not in self.tasks]
            if unknown:
                raise ValueError(f"protect names unknown tasks {unknown}; the tasks are {self.task_names}")
            unprotected = set(self.tasks) - set(protect)

        size = self.latent_size
        parts: list[Tensor] = []
        for name, embedding in zip(self.tasks, self.embeddings):
            if isinstance(embedding, LabelEmbedding):
                if name in unprotected:
                    parts.append(embedding.blank(batch, self.image_size, x))  # (B, E, S, S)
                    continue
                if by_name.get(name) is None:
                    raise ValueError(f"the dense task {name!r} is protected but `maps` holds no label map for it")
                label_map = by_name[name].to(x.device)
                if tuple(label_map.shape[-2:]) != (self.image_size, self.image_size) or label_map.shape[0] != batch:
                    raise ValueError(f"the label map of {name!r} must be ({batch}, ..., {self.image_size}, "
                                     f"{self.image_size}) like x, got {tuple(label_map.shape)}")
                parts.append(embedding(label_map))  # (B, E, S, S)
                continue
            if name in unprotected:
                row = embedding.weight.mean(dim=0, keepdim=True).expand(batch, -1)  # (B, E*S*S)
            else:
                row = embedding(labels[:, columns[name]])  # (B, E*S*S)
            parts.append(row.view(batch, self.embed_channels, size, size))
        if self.encoder is not None:
            # Embeddings first, then z (§2.2): the order fixes the decoder's first-layer weights.
            parts.append(self.encoder(x))  # (B, 2*width, S, S)
        h = torch.cat(parts, dim=1)  # (B, 16*K + 2*width, S, S) for "full"
        out = self.decoder(h)  # (B, C, H, W)
        if self.decorrelate != "none":
            out = decorrelate(out, x, zero_mean=self.decorrelate == "shift-zm")  # (B, C, H, W)
        if self.colour == "luma":
            out = out.mean(dim=1, keepdim=True).expand_as(out)  # (B, C, H, W), equal channels
        # Clamp at epsilon itself, not upstream's 0.0314 > 8/255 (§2.3, §13.3). Hard clamp as
        # upstream: saturated pixels pass no gradient.
        bound = _largest_not_above(self.epsilon, out.dtype)
        if self.bound == "tanh":
            # Deviation from §2.3 (option bound="tanh"): at PyTorch's default init ~98% of the raw outputs
            # exceed ±ε, so the hard clamp passes gradient through ~2% of pixels and the decoder barely
            # learns; ε·tanh keeps |δ| < ε with a gradient everywhere.
            return bound * torch.tanh(out)  # (B, C, H, W)
        return out.clamp(-bound, bound)  # (B, C, H, W)

    def load_weights(self, path: str | Path) -> None:
        """Strictly load a model.safetensors: tensor names and shapes must be exactly this generator's."""
        from safetensors import SafetensorError, safe_open

        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        try:
            with safe_open(str(path), framework="pt") as fh:
                found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
                if found != expected:
                    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
                    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
                    raise WeightsError(f"{path}: tensors do not match config.json (missing {missing[:3]}, "
                                       f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
                state = {k: fh.get_tensor(k) for k in fh.keys()}
                metadata = dict(fh.metadata() or {})
        except SafetensorError as exc:
            raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from None
        self.load_state_dict(state, strict=True)
        self.provenance = {key: metadata[key] for key in PROVENANCE if key in metadata}

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook for `save_pretrained`: model.safetensors with `weights_metadata()`, then config.json.

        The mixin writes config.json with sort_keys=True, which would sort the `tasks` mapping too and so
        reorder the tasks (and the embedding tables); it leaves a config.json written here alone."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = self.weights_metadata()
        atomic_write(save_directory / SAFETENSORS_SINGLE_FILE, lambda tmp: save_file(state, str(tmp), metadata=metadata))
        write_text(save_directory / CONFIG_NAME, json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str | torch.device = "cpu", **model_kwargs: Any) -> "PerturbationGenerator":
        """The mixin's hook for `from_pretrained`: a local folder or a Hub repo's model.safetensors, loaded strictly.
        Unlike the mixin's default there is no pickle fallback and nothing is printed."""
        weights = Path(model_id) / SAFETENSORS_SINGLE_FILE
        if not Path(model_id).is_dir():
            weights = Path(hf_hub_download(model_id, SAFETENSORS_SINGLE_FILE, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, token=token,
                                           local_files_only=local_files_only, library_name="mtlue",
                                           library_version=__version__))
        model = cls(**model_kwargs)
        model.load_weights(weights)
        return model.eval().to(map_location)


def _largest_not_above(value: float, dtype: torch.dtype) -> float:
    # float32(8/255) rounds *up*; stepping down one ulp keeps |delta| <= epsilon true even when
    # compared in float64, so a measured L-inf norm never exceeds the configured epsilon.
    bound = torch.tensor(value, dtype=dtype)
    if bound.item() > value:
        bound = torch.nextafter(bound, torch.zeros_like(bound))
    return bound.item()
