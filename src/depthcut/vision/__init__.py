"""Image classifiers for the CNN paths, offline: a packaged trained CIFAR-10 CNN (structure and
speed; its test images are not packaged any more) and Fashion-MNIST from Debian with a small
YOLO-style CNN trained on it once (accuracy before / after pruning)."""

from depthcut.vision.cifar import cifar_cnn, load_cifar_cnn
from depthcut.vision.fashion import FashionNet, fashion_mnist, trained_cnn
from depthcut.vision.train import Recipe, fit, top1

__all__ = [
    "FashionNet",
    "Recipe",
    "cifar_cnn",
    "fashion_mnist",
    "fit",
    "load_cifar_cnn",
    "top1",
    "trained_cnn",
]
