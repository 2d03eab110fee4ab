"""kdtune: knowledge distillation + pruning sweeps on CIFAR-10."""

__version__ = "0.1.0"
