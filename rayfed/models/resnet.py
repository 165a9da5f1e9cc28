"""torchvision's ResNet-18 with a CIFAR-style stem and the SISA notebook's classifier head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from rayfed.errors import UserError


def pretrained_weights_path() -> Path:
    """Where torchvision keeps the ImageNet ResNet-18 weights (torch's hub cache)."""
    from torchvision.models import ResNet18_Weights  # imported when used: torchvision.models costs ~2 s

    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resnet18_cifar(input_shape: tuple[int, int, int], num_classes: int, pretrained: bool = False) -> nn.Module:
    """ResNet-18 whose stem is a 3x3 stride-1 conv without max-pooling (small images), and whose head is the
    notebook's Linear(512, 512) - ReLU - Dropout(0.5) - Linear(512, num_classes).

    With `pretrained`, every ImageNet weight that fits (all but the stem conv and the head) is loaded from
    torch's hub cache; a missing file is a UserError, never a download attempt.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    if pretrained:
        path = pretrained_weights_path()
        if not path.is_file():
            raise UserError(
                f"model.pretrained: ImageNet ResNet-18 weights not found at {path}; copy "
                f"{ResNet18_Weights.IMAGENET1K_V1.url} there or set model.pretrained=false"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("conv1.", "fc."))}
        model.load_state_dict(state, strict=False)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes))
    return model
