"""vitinit: ViT initializations → detection backbones → Mask R-CNN benchmarks.

Reproduces the setup of *Benchmarking Detection Transfer Learning with Vision Transformers*
(Li, Xie, Chen, Dollár, He, Girshick, 2021; arXiv 2111.11429).
"""

__version__ = "0.1.0"
