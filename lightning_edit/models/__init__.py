"""Reference classifiers: a small CNN for 8x8 digits, CIFAR-style VGG and ResNet.

Every model takes ``in_channels`` and ``num_classes`` so the same class serves
digits (1x8x8), (Fashion-)MNIST (1x28x28) and CIFAR-10 (3x32x32); ``ViT`` is a small Vision Transformer.
"""

from lightning_edit.models.resnet import CifarResNet, resnet20, resnet56
from lightning_edit.models.small_cnn import SmallCNN
from lightning_edit.models.vgg import VGG, vgg11, vgg16, vgg19
from lightning_edit.models.vit import ViT

__all__ = ["SmallCNN", "VGG", "vgg11", "vgg16", "vgg19", "CifarResNet", "resnet20", "resnet56", "ViT"]
