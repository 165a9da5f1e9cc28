"""Classifiers (the notebook CNN, ResNet-18) and the audit GAN's generator and discriminator."""

from __future__ import annotations

import torch.nn as nn

from rayfed.errors import UserError
from rayfed.models.cnn import CNN
from rayfed.models.gan import Discriminator, FairnessGenerator
from rayfed.models.resnet import resnet18_cifar


def build_classifier(
    name: str, input_shape: tuple[int, int, int], num_classes: int, pretrained: bool = False
) -> nn.Module:
    """A fresh classifier by config name (`cnn` or `resnet18`)."""
    if name == "cnn":
        if pretrained:
            raise UserError("model.pretrained: only resnet18 has pretrained weights")
        return CNN(input_shape, num_classes)
    if name == "resnet18":
        return resnet18_cifar(input_shape, num_classes, pretrained)
    raise UserError(f"model.name: unknown model {name!r}")


__all__ = ["CNN", "Discriminator", "FairnessGenerator", "build_classifier", "resnet18_cifar"]
