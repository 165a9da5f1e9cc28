"""The notebook's CIFAR-10 CNN, made shape-generic (1x8x8, 1x28x28, 3x32x32 ...)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayfed.models.layers import TrimmedConv2d


class CNN(nn.Module):
    """Four conv-BN-ReLU blocks (64, 128, 256, 512 channels) with 2x2 max-pooling, then 512-unit FC + dropout.

    On 32x32 inputs it is exactly the notebook's network (pooling after every block, 512x2x2 features).
    On smaller inputs a block pools only while the feature map is at least 2 pixels high and wide; a block on
    a 1x1 map then runs only its kernels' centre taps (`TrimmedConv2d`, the same function).
    """

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        widths = [channels, 64, 128, 256, 512]
        self.convs = nn.ModuleList(TrimmedConv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(widths[i + 1]) for i in range(4))
        self.pool_after: list[bool] = []
        for _ in range(4):
            can_pool = height >= 2 and width >= 2
            self.pool_after.append(can_pool)
            if can_pool:
                height, width = height // 2, width // 2
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(512 * height * width, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, pool in zip(self.convs, self.bns, self.pool_after):
            x = F.relu(bn(conv(x)))
            if pool:
                x = self.pool(x)
        x = x.flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)
