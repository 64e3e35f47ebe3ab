"""The MTL-UE perturbation generator G(x, y) = Clip(D([e^1_{y^1}, ..., e^K_{y^K}, E(x)]), -eps, eps).

Architecture follows method-spec §2 exactly (the official `ResNetDAE`), with two deliberate
differences: the clamp is at `epsilon` itself (8/255 by default) instead of the official 0.0314
(§2.3, §13.3), and config.json keeps the user's task order (the mixin would sort it).
"""

import json
from collections import OrderedDict
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

STEMS = ("cifar", "imagenet")
CONDITIONINGS = ("full", "classwise", "z_only")
BOUNDS = ("clamp", "tanh")
WIDTHS = (16, 32, 64)  # 64 = the paper's ResNet-18 stem width (§2.1); z has 2x that many channels


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
    ) -> None:
        super().__init__()
        tasks = _check_tasks(tasks)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(STEMS)}")
        if bound not in BOUNDS:
            raise ValueError(f"unknown bound {bound!r}: use one of {', '.join(BOUNDS)}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}: use one of {', '.join(CONDITIONINGS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        if width not in WIDTHS:
            raise ValueError(f"width must be one of {', '.join(map(str, WIDTHS))}, got {width}")
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must lie in (0, 1) (pixel units, e.g. 8/255), got {epsilon}")
        if embed_channels < 1:
            raise ValueError(f"embed_channels must be a positive integer, got {embed_channels}")
        factor = 2 if stem == "cifar" else 8
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
        # The mixin captured the caller's objects in __new__; keep a normalised copy instead, so
        # config.json always matches what was built.
        self._hub_mixin_config = {
            "bound": bound,
            "conditioning": conditioning,
            "embed_channels": embed_channels,
            "epsilon": self.epsilon,
            "image_size": image_size,
            "in_channels": in_channels,
            "stem": stem,
            "tasks": {name: list(classes) for name, classes in tasks.items()},
            "unprotected": list(unprotected),
            "width": width,
        }

        size = self.latent_size
        # Parts that the chosen conditioning never reads are not built, so every parameter that
        # exists gets a gradient (style rule 10).
        self.encoder = _encoder(in_channels, stem, width) if conditioning != "classwise" else None
        self.embeddings = nn.ModuleList(
            []
            if conditioning == "z_only"
            # PyTorch's default N(0, 1) init, as upstream (§2.2); one row of 16*S*S per class.
            else [nn.Embedding(len(classes), embed_channels * size * size) for classes in tasks.values()]
        )
        decoder_in = {
            "full": embed_channels * len(tasks) + 2 * width,
            "classwise": embed_channels * len(tasks),
            "z_only": 2 * width,
        }[conditioning]
        self.decoder = _decoder(decoder_in, in_channels, stem, width)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def num_classes(self) -> list[int]:
        return [len(classes) for classes in self.tasks.values()]

    @property
    def latent_size(self) -> int:
        """Spatial side S of z and of each reshaped embedding."""
        return self.image_size // (2 if self.stem == "cifar" else 8)

    def embedding_weights(self) -> list[Tensor]:
        """The raw class-embedding tables, one (C_k, embed_channels*S*S) per task (empty for z_only)."""
        return [embedding.weight for embedding in self.embeddings]

    def forward(self, x: Tensor, labels: Tensor, protect: list[str] | None = None) -> Tensor:
        """Perturbations delta for images x (B, C, H, W) in [0, 1] with labels (B, K) class indices.

        protect: names of the tasks to protect in this call; None means every task not listed in
        `unprotected`. Unprotected tasks get the label-independent mean embedding (§2.4).
        """
        batch = x.shape[0]
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if labels.dim() != 2 or labels.shape != (batch, len(self.tasks)):
            raise ValueError(f"labels must have shape ({batch}, {len(self.tasks)}), got {tuple(labels.shape)}")
        if protect is None:
            unprotected = set(self.unprotected)
        else:
            unknown = [name for name in protect if name not in self.tasks]
            if unknown:
                raise ValueError(f"protect names unknown tasks {unknown}; the tasks are {self.task_names}")
            unprotected = set(self.tasks) - set(protect)

        size = self.latent_size
        parts: list[Tensor] = []
        for k, (name, embedding) in enumerate(zip(self.tasks, self.embeddings)):
            if name in unprotected:
                row = embedding.weight.mean(dim=0, keepdim=True).expand(batch, -1)  # (B, E*S*S)
            else:
                row = embedding(labels[:, k])  # (B, E*S*S)
            parts.append(row.view(batch, self.embed_channels, size, size))
        if self.encoder is not None:
            # Embeddings first, then z (§2.2): the order fixes the decoder's first-layer weights.
            parts.append(self.encoder(x))  # (B, 2*width, S, S)
        h = torch.cat(parts, dim=1)  # (B, 16*K + 2*width, S, S) for "full"
        out = self.decoder(h)  # (B, C, H, W)
        # Clamp at epsilon itself, not upstream's 0.0314 > 8/255 (§2.3, §13.3). Hard clamp as
        # upstream: saturated pixels pass no gradient.
        bound = _largest_not_above(self.epsilon, out.dtype)
        if self.bound == "tanh":
            # Deviation from §2.3 (option bound="tanh"): at PyTorch's default init ~98% of the raw outputs
            # exceed ±ε, so the hard clamp passes gradient through ~2% of pixels and the decoder barely
            # learns; ε·tanh keeps |δ| < ε with a gradient everywhere.
            return bound * torch.tanh(out)  # (B, C, H, W)
        return out.clamp(-bound, bound)  # (B, C, H, W)

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        # The mixin writes config.json with sort_keys=True, which would sort the `tasks` mapping
        # and silently reorder the tasks (and so the embedding tables). Written here, the mixin
        # leaves it alone.
        config = dict(sorted(self._hub_mixin_config.items()))
        (save_directory / "config.json").write_text(json.dumps(config, indent=2))


def _largest_not_above(value: float, dtype: torch.dtype) -> float:
    # float32(8/255) rounds *up*; stepping down one ulp keeps |delta| <= epsilon true even when
    # compared in float64, so a measured L-inf norm never exceeds the configured epsilon.
    bound = torch.tensor(value, dtype=dtype)
    if bound.item() > value:
        bound = torch.nextafter(bound, torch.zeros_like(bound))
    return bound.item()


def _check_tasks(tasks: dict[str, list[str]]) -> dict[str, list[str]]:
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError("tasks must be a non-empty mapping of task name -> list of class names")
    checked: dict[str, list[str]] = {}
    for name, classes in tasks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
            raise ValueError(f"task {name!r}: classes must be a list of class names, got {classes!r}")
        classes = list(classes)
        if len(classes) < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {classes}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"task {name!r} lists a class twice: {classes}")
        checked[name] = classes
    return checked
