"""alexnet: Krizhevsky, Sutskever & Hinton (2012) reproduced in PyTorch."""

__version__ = "0.1.0"
