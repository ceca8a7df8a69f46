"""Data sources, deterministic splits and content fingerprints.

A pipeline's ``data:`` section (:class:`DataConfig`) names where samples come from:

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download),
  loaded as ``(N, 1, 8, 8)`` with labels 0-9;
* ``npz``: a ``.npz`` archive with arrays ``x_key`` (default ``x``) and optionally ``y_key``
  (default ``y``), saved with ``np.savez(path, x=..., y=...)``;
* ``image_folder``: one sub-folder per class (sorted folder names give labels 0..K-1), or a flat folder
  of images without labels;
* ``callable``: ``"module:function"`` returning ``(x, y)`` array-likes (``y`` may be ``None``) or an
  indexable dataset of ``(x, y)`` pairs (e.g. a torch ``Dataset``); the pipeline file's folder is put
  on ``sys.path`` first so modules next to it import.

Arrays are turned into a :class:`Dataset`: ``x`` float32 ``(N, C, H, W)`` (images) or ``(N, F)``
(anything else), ``y`` int64 class indices or ``None``. The steps, in order:

1. ``limit``: keep at most that many samples, chosen by a seeded shuffle (kept in original order);
2. ``layout``: 4-D arrays in ``NHWC`` are transposed to ``NCHW``; 3-D arrays ``(N, H, W)`` get a
   channel axis; 2-D arrays ``(N, F)`` are left alone (and may not use ``channels``/``image_size``);
3. ``channels``: 1 -> 3 repeats the channel, 3 -> 1 takes the mean; any other change is an error;
4. ``image_size``: bilinear resize (antialiased when shrinking) to ``image_size x image_size``;
5. ``normalize``: ``none`` keeps values as they are (as float32); ``unit`` divides by the source's
   full scale (digits: 16, uint8 arrays and image files: 255; any other dtype is assumed to be
   in [0, 1] already and is left as it is); ``standard`` applies ``unit`` and then
   ``(x - 0.5) / 0.5``, mapping [0, 1] to [-1, 1]. The default is ``standard`` for ``digits`` and
   ``none`` for the user's own data (npz, image_folder, callable): data the user prepared for their
   model is never re-normalised behind their back. The run prints the input range it sees.

Splits (``train`` / ``calibration`` / ``eval`` fractions of the samples) are disjoint index arrays,
seeded by ``seed`` and stratified by label when labels exist: samples are grouped by class (shuffled
within each class) and dealt to the splits by an evenly spread sequence, so every class lands in each
split in proportion, within one sample, however small the class. Fractions summing below 1 leave the
rest unused. ``Dataset.fingerprint`` is a sha256 over the final arrays, the split indices and the
content-changing settings: identical inputs give identical fingerprints in any process.

Module-level imports are stdlib, pydantic and numpy only; scikit-learn, PIL and torch are imported
inside the functions that need them (``compress validate`` imports this module).
"""
from compress.data.config import ArrayOptions, DataConfig, SplitConfig, parse_data_config
from compress.data.dataset import Dataset, make_synthetic
from compress.data.sources import check_input_shape, check_named_inputs, load_dataset

__all__ = ["ArrayOptions", "DataConfig", "Dataset", "SplitConfig", "check_input_shape", "check_named_inputs", "load_dataset",
           "make_synthetic", "parse_data_config"]
