"""The ``data:`` section of a pipeline: sources, splits and the settings that change content."""
from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.data.text import TextConfig
from compress.errors import ConfigError

SPLIT_NAMES = ("train", "calibration", "eval")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_FINGERPRINT_VERSION = "compress.data/1"
# Fields of ArrayOptions that change a dataset's content (and so enter its fingerprint).
_CONTENT_FIELDS = ("seed", "splits", "limit", "normalize", "layout", "image_size", "channels")


# --------------------------------------------------------------------------------------------------
# Configuration


class SplitConfig(BaseModel):
    """Fractions of the samples per split; they may sum to less than 1 (the rest is unused)."""

    model_config = ConfigDict(extra="forbid")
    train: float = Field(0.6, ge=0, le=1, description="Training / fine-tuning share.")
    calibration: float = Field(0.1, ge=0, le=1, description="Share used to calibrate quantization.")
    eval: float = Field(0.3, gt=0, le=1, description="Share used for every accuracy measurement.")

    @model_validator(mode="after")
    def _sum(self) -> "SplitConfig":
        total = self.train + self.calibration + self.eval
        if total > 1 + 1e-9:
            raise ValueError(f"train + calibration + eval = {total:g} > 1; lower them so they sum "
                             f"to at most 1 (any rest is left unused)")
        return self


class ArrayOptions(BaseModel):
    """How arrays become a :class:`Dataset` (the content-changing part of :class:`DataConfig`)."""

    model_config = ConfigDict(extra="forbid")
    image_size: int | None = Field(None, ge=1, description="Resize images to image_size x image_size (bilinear).")
    channels: int | None = Field(None, ge=1, description="Channels wanted: 1 -> 3 repeats, 3 -> 1 averages.")
    normalize: Literal["none", "unit", "standard"] | None = Field(
        None, description="'none': values as given; 'unit': scale to [0, 1] (digits /16, uint8 /255, floats "
        "unchanged); 'standard': 'unit' then (x - 0.5) / 0.5. Default: 'standard' for digits, 'none' for your "
        "own data (npz, image_folder, callable), which is never re-normalised unless you ask.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Axis order of 4-D npz/callable arrays; "
                                            "NHWC is transposed to NCHW.")
    seed: int = Field(0, ge=0, description="Seed of the limit shuffle and of the splits.")
    splits: SplitConfig = Field(default_factory=SplitConfig)
    limit: int | None = Field(None, ge=1, description="Use at most this many samples (seeded choice).")


class DataConfig(ArrayOptions):
    """Where the samples come from and how they are prepared and split (see the module docstring)."""

    source: Literal["digits", "npz", "image_folder", "callable", "text"] = Field(
        "digits", description="digits (sklearn, offline), npz file, image_folder, a Python callable, or text "
        "(real sentences from Python's own stdlib docstrings, tokenised offline: input_ids + attention_mask).")
    text: TextConfig | None = Field(None, description="data.source: text only: packages, seq_len, vocab_size.")
    path: str | None = Field(None, description="The .npz file or image folder; relative paths resolve against "
                             "the pipeline file's folder.")
    callable: str | None = Field(None, description="'module:function' returning (x, y) or a dataset of (x, y) "
                                 "pairs; the pipeline file's folder is on sys.path.")
    x_key: str = Field("x", description="Array name of the samples in the .npz file; when not set, the first of "
                       "x, images, inputs, X, data, samples present.")
    y_key: str = Field("y", description="Array name of the labels in the .npz file; when not set, the first of "
                       "y, labels, label, targets, target, Y present (none: the run is label-free and says so). With named "
                       "model.inputs the other arrays are matched to the inputs by name.")

    @model_validator(mode="after")
    def _source_fields(self) -> "DataConfig":
        src = self.source
        if self.normalize is None:  # user data is taken as given: preprocessing is the user's, not ours
            self.normalize = "standard" if src == "digits" else "none"
        if src in ("npz", "image_folder") and not self.path:
            what = "a .npz file with arrays 'x' and 'y'" if src == "npz" else "a folder with one sub-folder per class"
            raise ValueError(f"data.path is required when data.source is '{src}': give {what}")
        if src not in ("npz", "image_folder") and self.path is not None:
            raise ValueError(f"data.path is not used when data.source is '{src}': remove it, or set data.source "
                             f"to npz or image_folder")
        if src == "callable":
            if not self.callable:
                raise ValueError("data.callable is required when data.source is 'callable': give "
                                 "'module:function'")
            mod, _, fn = self.callable.partition(":")
            if not mod.strip() or not fn.strip():
                raise ValueError(f"data.callable must look like 'module:function', got '{self.callable}'")
        elif self.callable is not None:
            raise ValueError(f"data.callable is not used when data.source is '{src}': remove it, or set "
                             f"data.source: callable")
        if self.text is not None and src != "text":
            raise ValueError(f"data.text is used only when data.source is 'text' (it is '{src}'): remove it")
        if src == "text" and self.text is None:
            self.text = TextConfig()
        if src in ("digits", "image_folder", "text") and self.layout == "NHWC":
            raise ValueError(f"data.layout applies to npz/callable arrays only; remove it for data.source '{src}'")
        return self


def parse_data_config(raw: Mapping[str, Any] | None, where: str = "data") -> DataConfig:
    """Validate a ``data:`` mapping outside a pipeline file; the first problem becomes a one-line ConfigError."""
    try:
        return DataConfig.model_validate(dict(raw or {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        raise ConfigError(f"{loc}: {msg}") from None
