"""The embedded hardware-aware architecture search behind the ``search.nas`` stage, as small replaceable
modules: ``space`` (interface + genome operators), ``elastic`` (weight sharing), ``mbnet`` / ``resnet``
(built-in families), ``supernet`` (sandwich-rule training), ``latency`` (per-block table measured on the
target), ``strategy`` (aging evolution, NSGA-II, random search, hypervolume) and ``executor`` (in-process,
process pool, Ray)."""
