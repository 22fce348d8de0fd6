"""The dataset of benchmarks/pretrained.py, as a user's own ``data.name: python:`` builder:
Fashion-MNIST as 3-channel images scaled to [-1, 1], the input convention of the
ImageNet-pretrained TF EfficientNet-Lite weights (timm's mean = std = 0.5, as
``lite_weights.IMAGENET_MEAN/STD``; kept a separate small file because its hash joins the
teacher's cache key)."""

from __future__ import annotations

from lana.model.data import fashion_mnist


def fashion_mnist_rgb(image_size: int = 64, path: str | None = None):
    """(train, test) of Fashion-MNIST at ``image_size`` px, grey repeated to RGB."""
    return fashion_mnist(path, image_size, mean=0.5, std=0.5, channels=3)
