"""Reference model architectures ("the zoo").

This module is deliberately light: it does not import torch. Architectures are
registered by dotted path and imported lazily by :func:`get`, so configuration
validation can check model names without paying for a torch import.

Example::

    from compress import zoo
    model = zoo.get("resnet20")(num_classes=10)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["ZOO", "get", "names"]

#: Model name -> ``"module:function"`` of its builder.
ZOO: dict[str, str] = {
    "resnet20": "compress.zoo.resnet:resnet20",
    "resnet18": "compress.zoo.resnet:resnet18",
    "mobilenetv2": "compress.zoo.mobilenet:mobilenetv2",
    "efficientnet_b0": "compress.zoo.efficientnet:efficientnet_b0",
    "transformer": "compress.zoo.transformer:transformer",
    "tiny_cnn": "compress.zoo.tiny:tiny_cnn",
    "text_encoder": "compress.zoo.text:text_encoder",
}


def names() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(ZOO)


def get(name: str) -> Callable[..., nn.Module]:
    """Return the builder function registered under ``name``.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the known
            names and, when one is close, a did-you-mean suggestion.
    """
    try:
        target = ZOO[name]
    except KeyError:
        msg = f"unknown model {name!r}; known models: {', '.join(names())}"
        close = difflib.get_close_matches(str(name), ZOO, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        raise KeyError(msg) from None
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)
