"""Where a measurement was taken: CPU, cores, ISA flags, package versions, thread settings.

No hostname, user name or paths: the fingerprint goes into shareable reports.
Package versions are read from installed metadata; nothing heavy is imported.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "int8_reduce_range", "FLAGS_OF_INTEREST", "PACKAGES", "THREAD_ENV_VARS"]

#: ISA extensions that change which kernels (and so which speed-ups) a runtime can use
FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
)
#: distributions whose versions we record (the first installed alternative wins)
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "torch": ("torch",),
    "nncf": ("nncf",),
    "torch-pruning": ("torch-pruning", "torch_pruning"),
    "openvino": ("openvino",),
}
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _proc_cpuinfo() -> tuple[str | None, set[str], int | None]:
    """(model name, flags, physical cores) from /proc/cpuinfo; blanks where unavailable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, set(), None
    model = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and model is None:
            model = val
        elif key == "flags" and not flags:
            flags = set(val.split())
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not key and phys is not None and core is not None:  # blank line ends a processor block
            cores.add((phys, core))
            phys = core = None
    if phys is not None and core is not None:
        cores.add((phys, core))
    return model, flags, (len(cores) or None)


@functools.lru_cache(maxsize=1)
def _cpu() -> dict[str, Any]:
    """CPU model and flags: /proc/cpuinfo where it exists (instant), else py-cpuinfo (slow: it may spawn
    a subprocess). Cached per process."""
    proc_model, proc_flags, proc_physical = _proc_cpuinfo()
    brand, flags = proc_model, proc_flags
    if not brand or not flags:
        try:
            import cpuinfo  # py-cpuinfo

            info = cpuinfo.get_cpu_info()
            brand = brand or info.get("brand_raw") or None
            flags = flags or {str(f).lower() for f in info.get("flags", [])}
        except Exception:  # not installed, or failed on this platform
            pass

    physical = None
    if importlib.util.find_spec("psutil") is not None:
        try:
            import psutil

            physical = psutil.cpu_count(logical=False)
        except Exception:
            physical = None
    physical = physical or proc_physical

    present = [f for f in FLAGS_OF_INTEREST if f in flags]
    return {
        "cpu_model": brand,
        "physical_cores": physical,
        "cpu_flags": present,
        "amx": any(f.startswith("amx") for f in present),
        "vnni": any(f in ("avx512_vnni", "avx_vnni") for f in present),
    }


def machine_key() -> dict[str, Any]:
    """What a timing depends on besides the model and the target: the CPU (model, ISA flags, cores)."""
    return {**_cpu(), "usable_cores": _usable_cores()}


def int8_reduce_range(setting: bool | str = "auto") -> tuple[bool, str]:
    """Whether INT8 weights should use the reduced (7-bit) range on this CPU, and why.

    ``setting`` is a stage's ``reduce_range``: ``True``/``False`` are taken as given; ``"auto"`` follows
    ONNX Runtime's own guidance (``onnxruntime.quantization.quantize_static`` docstring): on x86 without
    VNNI, U8S8 products can saturate the 16-bit intermediate of the AVX2 kernels, so weights are
    quantized to 7 bits there; with VNNI (or AMX), or off x86, the full range is used."""
    if setting != "auto":
        return bool(setting), f"reduce_range: {str(bool(setting)).lower()} (set in the pipeline)"
    cpu = _cpu()
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False, f"reduce_range auto -> false: {machine} CPU (the U8S8 saturation issue is x86-only)"
    flags = ", ".join(cpu["cpu_flags"]) or "none of interest"
    if cpu["vnni"] or cpu["amx"]:
        return False, f"reduce_range auto -> false: this x86 CPU has VNNI/AMX ({flags}): 8-bit products do not saturate"
    return True, (f"reduce_range auto -> true: this x86 CPU has no VNNI (flags: {flags}); ONNX Runtime documents "
                  f"that U8S8 can saturate there, so weights use 7 bits (set reduce_range: false to "
                  f"override)")


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cgroup_cpu_limit() -> float | None:
    """CPU quota of this container (cgroup v2 ``cpu.max``), in cores; None when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def isa(flags: list[str] | set[str], machine: str | None = None, gpu: str | None = None) -> str:
    """The instruction set in words, e.g. ``x86_64 AVX2 FMA (no AVX-512, no VNNI, no AMX)``: what decides
    which kernels (and so which speed-ups) a runtime can use. ``gpu``: the accelerator a target used."""
    f = set(flags)
    has = []
    if "avx2" in f:
        has.append("AVX2")
    if "fma" in f:
        has.append("FMA")
    if "avx512f" in f:
        has.append("AVX-512" + ("+BW" if "avx512bw" in f else ""))
    if "avx512_vnni" in f:
        has.append("AVX-512 VNNI")
    if "avx_vnni" in f:
        has.append("AVX-VNNI")
    if "avx512_bf16" in f:
        has.append("AVX-512 BF16")
    if any(x.startswith("amx") for x in f):
        has.append("AMX")
    missing = [name for name, present in (("AVX-512", "avx512f" in f),
                                          ("VNNI", bool(f & {"avx512_vnni", "avx_vnni"})),
                                          ("AMX", any(x.startswith("amx") for x in f))) if not present]
    text = " ".join([machine or platform.machine(), *has]) if has else (machine or platform.machine())
    if missing:
        text += f" (no {', no '.join(missing)})"
    if gpu:
        text += f"; GPU: {gpu}"
    return text


def accelerators(targets: list[Any]) -> str | None:
    """The GPUs/accelerators the targets ask for (ORT CUDA/TensorRT/ROCm providers, an OpenVINO GPU/NPU
    device), e.g. ``onnxruntime CUDAExecutionProvider``; None for CPU-only targets."""
    used = []
    for t in targets:
        d = t if isinstance(t, dict) else t.model_dump(mode="json")
        for p in d.get("providers") or []:
            if p != "CPUExecutionProvider":
                used.append(f"{d.get('runtime')} {p}")
        dev = str(d.get("device") or "CPU")
        if not dev.upper().startswith("CPU"):
            used.append(f"{d.get('runtime')} {dev}")
    return ", ".join(dict.fromkeys(used)) or None


def fingerprint(threads: dict | None = None, gpu: str | None = None) -> dict:
    """A JSON-able description of this machine and software stack.

    ``threads``: the thread settings the measurement used (e.g. ``{"intra_op": 1,
    "inter_op": 1}``), recorded verbatim under ``"threads"``.
    """
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    cpu = _cpu()
    return {
        **cpu,
        "isa": isa(cpu["cpu_flags"], platform.machine(), gpu),
        "gpu": gpu,
        "cpu_flags": list(cpu["cpu_flags"]),  # a copy: callers may mutate, the cache must not change
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_quota_cores": _cgroup_cpu_limit(),
        "load_avg_1m": load,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(dists) for name, dists in PACKAGES.items()},
        "thread_env": {var: os.environ.get(var) for var in THREAD_ENV_VARS},
        "threads": dict(threads) if threads else {},
    }


def differences(a: dict, b: dict) -> list[str]:
    """What makes latency measured under fingerprint ``a`` incomparable with ``b``: CPU model, ISA flags
    (VNNI, AVX-512, AMX change which kernels run), core count, runtime version. Empty when comparable."""
    out = []
    for key, label in (("cpu_model", "CPU"), ("cpu_flags", "ISA flags"), ("usable_cores", "usable cores")):
        va, vb = a.get(key), b.get(key)
        if key == "cpu_flags":
            va, vb = sorted(va or []), sorted(vb or [])
        if va != vb:
            show = (lambda v: ", ".join(v) or "none") if key == "cpu_flags" else str
            out.append(f"{label}: {show(va)} vs {show(vb)}")
    pa, pb = (a.get("packages") or {}).get("onnxruntime"), (b.get("packages") or {}).get("onnxruntime")
    if pa != pb:
        out.append(f"onnxruntime {pa} vs {pb}")
    return out
