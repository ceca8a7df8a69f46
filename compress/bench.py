"""``compress bench A.onnx B.onnx [...] --target ...``: the interleaved comparison of ONNX files, for users who
just want a number.

The files are measured through the measurement service exactly like a pipeline's records: opened in each
target's runtime with the target's options, timed round-robin in one process by the one timing loop, and
compared by the paired per-round speed-up (the median over rounds of A's time / X's time), with its 95%
sign-test interval and the spread (interquartile range) of the per-round ratios. Inputs are the
evaluation samples of ``--data`` (a pipeline ``data:`` mapping) or, by default, seeded random inputs of
each model input's shape and dtype (float: standard normal; integer: ones; bool: true).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import ConfigError

_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 11: "float64"}


def onnx_inputs(path: Path, seq: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """``[{name, shape, dtype}]`` of an ONNX model's graph inputs (initializers excluded); a symbolic first
    axis is the batch; other symbolic axes must be given in ``seq`` (name -> size)."""
    from compress.onnx_graph import load

    model = load(path)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(d.dim_param or "batch")
            elif seq and d.dim_param in seq:
                dims.append(int(seq[d.dim_param]))
            else:
                raise ConfigError(f"{path}: input '{inp.name}' axis {i} is symbolic ('{d.dim_param}')",
                                  hint=f"give its size with --dim {d.dim_param or 'NAME'}=SIZE")
        dtype = _DTYPES.get(t.elem_type)
        if dtype is None:
            raise ConfigError(f"{path}: input '{inp.name}' has ONNX element type {t.elem_type}, which bench "
                              f"cannot generate", hint="give real inputs with --data")
        specs.append({"name": inp.name, "shape": dims, "dtype": dtype})
    return specs


def random_dataset(specs: list[dict[str, Any]], n: int = 64, seed: int = 0):
    """A dataset of ``n`` seeded inputs matching ``specs`` (no labels)."""
    import numpy as np

    from compress.data.config import ArrayOptions
    from compress.data.dataset import Dataset, _build_named

    rng = np.random.default_rng(seed)
    arrays = {}
    for s in specs:
        shape = (n, *[int(d) for d in s["shape"][1:]])
        dt = np.dtype(s["dtype"])
        arrays[s["name"]] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.ones(shape, dt)
    opts = ArrayOptions(normalize="none", splits={"train": 0.0, "calibration": 0.0, "eval": 1.0})
    if len(specs) == 1 and specs[0]["dtype"] == "float32":
        return Dataset.from_arrays(arrays[specs[0]["name"]], None, opts, source_desc="random normal inputs")
    return _build_named(arrays, None, opts, where="bench inputs", source_desc="random inputs",
                        dtypes={s["name"]: s["dtype"] for s in specs})


def onnx_artifact(path: Path, specs: list[dict[str, Any]]):
    """An in-memory artifact for a user's ONNX file where it lies (with its external data; nothing written)."""
    from compress.artifact import Artifact, onnx_external_files, sha256_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: ONNX file not found")
    files = {"onnx": path.name, **{f"onnx_data{i}": loc for i, loc in enumerate(onnx_external_files(path))}}
    first = specs[0]
    shape = tuple(d if isinstance(d, int) else 1 for d in first["shape"])
    return Artifact(format="onnx", precision="float32", dir=path.parent, files=files,
                    file_hashes={r: sha256_file(path.parent / f) for r, f in files.items()},
                    input_shape=shape, input_name=first["name"], inputs=tuple(specs), producer=str(path))


def bench(files: list[Path], targets: list[Any], dataset: Any = None, *, progress=None) -> dict[str, Any]:
    """Time ``files`` interleaved on each target; the first file is the reference of every speed-up."""
    import tempfile

    from compress.cache import Cache
    from compress.config import EvaluationConfig
    from compress.export import ExportConfig
    from compress.measure import Measure
    from compress.runtimes.environment import accelerators, fingerprint
    from compress.runtimes.timing import paired_ratios, percentile

    specs = onnx_inputs(files[0])
    arts = [onnx_artifact(f, specs) for f in files]
    ds = dataset if dataset is not None else random_dataset(specs)
    out: dict[str, Any] = {"files": [str(f) for f in files], "inputs": specs, "data": ds.source_desc,
                           "environment": fingerprint(gpu=accelerators(targets)), "targets": []}
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        m = Measure(Cache(Path(tmp), enabled=False), targets=targets, dataset=ds, export=ExportConfig(),
                    evaluation=EvaluationConfig(), base_dir=Path.cwd(), remeasure=True, progress=progress)
        for t in targets:
            stats = m.latency(arts, t, names=[f"{i}:{f.name}" for i, f in enumerate(files)])
            rows = []
            for f, st in zip(files, stats):
                row: dict[str, Any] = {"file": str(f), "p50_ms": st.p50_ms, "p90_ms": st.p90_ms, "n": st.n,
                                       "robust_cv": st.robust_cv, "unstable": st.unstable}
                ratios = sorted(paired_ratios(stats[0], st))
                row["speedup"] = Measure.speedup(stats[0], st)
                row["speedup_ci"], row["rounds"] = Measure.speedup_ci(stats[0], st)
                row["speedup_iqr"] = [percentile(ratios, 25), percentile(ratios, 75)] if ratios else None
                rows.append(row)
            out["targets"].append({"name": t.name, "runtime": t.runtime, "options": t.options(), "results": rows})
    return out


def render(result: dict[str, Any]) -> list[str]:
    """Plain-text lines: one block per target, the first file the reference."""
    env = result["environment"]
    lines = [f"CPU: {env.get('cpu_model')} ({env.get('isa')}); inputs: {result['data']}; "
             f"speed-up = median over interleaved rounds of (first file's time / this file's time)"]
    for t in result["targets"]:
        lines.append(f"target {t['name']} ({t['runtime']}: "
                     + ", ".join(f"{k}={v}" for k, v in t["options"].items() if k != "runtime") + ")")
        for r in t["results"]:
            ci = f" 95% [{r['speedup_ci'][0]:.2f}, {r['speedup_ci'][1]:.2f}]" if r["speedup_ci"] else ""
            iqr = f" IQR [{r['speedup_iqr'][0]:.2f}, {r['speedup_iqr'][1]:.2f}]" if r["speedup_iqr"] else ""
            lines.append(f"  {r['file']}: p50 {r['p50_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, n={r['n']}"
                         + (" (unstable)" if r["unstable"] else "")
                         + f"; speed-up {r['speedup']:.3f}x{ci}{iqr} over {r['rounds']} rounds")
    return lines
