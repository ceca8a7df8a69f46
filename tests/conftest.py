"""Shared fixtures: tiny pipelines that run end to end in seconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

import torch  # noqa: E402

# Tiny test models train fastest on one thread, and a shared CI box stays responsive.
torch.set_num_threads(1)

FAST_TIMING = {"warmup_runs": 1, "warmup_seconds": 0.0, "min_runs": 3, "max_runs": 20, "min_seconds": 0.005,
               "max_seconds": 1.0, "block": 2}


def tiny_pipeline(tmp: Path, **overrides) -> dict:
    """A small, fast pipeline: tiny_cnn trained for a few steps on 400 digits."""
    cfg = {
        "name": "tiny",
        "model": {"zoo": "tiny_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 8},
                  "input_shape": [1, 1, 8, 8], "train": {"steps": 30, "batch_size": 32, "lr": 0.01}},
        "data": {"source": "digits", "limit": 400},
        "targets": [{"name": "ort", "timing": FAST_TIMING}],
        "stages": [{"name": "fold", "type": "transform.fold_bn"}, {"name": "export", "type": "export.onnx"}],
        "output": {"dir": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
    }
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def save_user_weights(folder: Path, module: str = "usermodel", file: str = "w.pt") -> Path:
    """Import ``folder/<module>.py``, save ``build()``'s state dict to ``folder/<file>``, forget the module."""
    import sys

    sys.modules.pop(module, None)
    sys.path.insert(0, str(folder))
    try:
        mod = __import__(module)
        torch.save(mod.build().state_dict(), folder / file)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)
    return folder / file


@pytest.fixture
def tiny_yaml(tmp_path: Path):
    def make(**overrides) -> Path:
        return write_yaml(tmp_path / "pipe.yaml", tiny_pipeline(tmp_path, **overrides))

    return make


@pytest.fixture
def add_runtime():
    """Register Runtime classes as plug-ins for one test (what a ``compress.runtimes`` entry point does)."""
    import sys
    import types

    from compress import config
    from compress.runtimes import base

    added: list[tuple[str, str]] = []

    def clear() -> None:
        base.registry.cache_clear()
        config.target_union.cache_clear()
        config.pipeline_model.cache_clear()

    def add(cls) -> None:
        mod = types.ModuleType(f"compress_test_runtime_{cls.name}")
        setattr(mod, cls.__name__, cls)
        sys.modules[mod.__name__] = mod
        base.BUILTIN[cls.name] = f"{mod.__name__}:{cls.__name__}"
        added.append((cls.name, mod.__name__))
        clear()

    yield add
    for name, module in added:
        base.BUILTIN.pop(name, None)
        sys.modules.pop(module, None)
    clear()
