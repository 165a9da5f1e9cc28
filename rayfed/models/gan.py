"""The Fed-AuditGAN notebook's fairness generator and conditional discriminator, made shape-generic.

Both work in the GAN's pixel space [-1, 1] (tanh output); `rayfed.fl.gan_audit` maps generated images into
the classifier's input space before the classifier sees them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from rayfed.models.layers import TrimmedConv2d, UpsampleConv2d


class FairnessGenerator(nn.Module):
    """(z, label) -> (x, x'), x' = clamp(x + delta(z), -1, 1) with |delta| <= delta_scale.

    Image height and width must be divisible by 4 (8x8, 28x28 and 32x32 are).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        num_classes: int = 10,
        img_shape: tuple[int, int, int] = (3, 32, 32),
        delta_scale: float = 0.1,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.img_shape = img_shape
        self.delta_scale = delta_scale
        channels, height, width = img_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {img_shape}")
        self.init_size = (height // 4, width // 4)
        self.label_emb = nn.Embedding(num_classes, latent_dim)
        self.l1 = nn.Linear(latent_dim * 2, 256 * self.init_size[0] * self.init_size[1])
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(256),
            UpsampleConv2d(256, 256),  # nn.Upsample(scale_factor=2) + nn.Conv2d(256, 256, 3, 1, 1)
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            UpsampleConv2d(256, 128),  # nn.Upsample(scale_factor=2) + nn.Conv2d(256, 128, 3, 1, 1)
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Conv2d(128, channels, 3, 1, 1),
            nn.Tanh(),
        )
        self.delta_net = nn.Sequential(
            nn.Linear(latent_dim, 512), nn.ReLU(), nn.Linear(512, math.prod(img_shape)), nn.Tanh()
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.l1(torch.cat([z, self.label_emb(labels)], dim=1))
        x = self.conv_blocks(out.view(-1, 256, *self.init_size))
        delta = self.delta_net(z).view(-1, *self.img_shape) * self.delta_scale
        return x, torch.clamp(x + delta, -1, 1)


class Discriminator(nn.Module):
    """Conditional discriminator: image + one label map per class -> one logit (real vs generated)."""

    def __init__(self, num_classes: int = 10, img_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        self.num_classes = num_classes
        self.img_shape = img_shape
        self.label_emb = nn.Embedding(num_classes, num_classes)
        self.conv = nn.Sequential(
            TrimmedConv2d(img_shape[0] + num_classes, 64, 3, 2, 1),
            nn.LeakyReLU(0.2),
            TrimmedConv2d(64, 128, 3, 2, 1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            TrimmedConv2d(128, 256, 3, 2, 1),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            TrimmedConv2d(256, 512, 3, 2, 1),
            nn.BatchNorm2d(512),
            nn.LeakyReLU(0.2),
        )
        height, width = img_shape[1:]
        for _ in range(4):
            height, width = (height + 1) // 2, (width + 1) // 2
        self.fc = nn.Linear(512 * height * width, 1)

    def forward(self, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        label_map = self.label_emb(labels).view(-1, self.num_classes, 1, 1).expand(-1, -1, *self.img_shape[1:])
        out = self.conv(torch.cat([img, label_map], dim=1))
        return self.fc(out.flatten(1))
