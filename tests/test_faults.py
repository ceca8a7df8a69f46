"""The fault matrix: everything the cache or the user can hand us that could silently change a number or
leave a user stuck. Each case asserts the exit code, the one-line message, and that finished work is kept.

Cases: corrupt cache entries of every kind (artifact file, artifact manifest, facts/evaluation/timing
JSON, non-UTF-8 JSON, evaluation arrays), a run killed (``os._exit``, like kill -9) while building the
baseline, inside a stage, while evaluating and while timing, concurrent runs of one pipeline, stale locks, binary and corrupt
inputs, unwritable output folders, out-of-range gates, did-you-mean, label-free data.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import main
from conftest import save_user_weights, tiny_pipeline, write_yaml

ROOT = Path(__file__).resolve().parent.parent
CORRUPT = "corrupt cache entry removed, recomputing"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_error_line(output: str) -> str:
    """The run's error: exactly one line starting with 'error:' and no traceback."""
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def report(tmp: Path) -> dict:
    return json.loads((tmp / "run" / "report.json").read_text())


def numbers(rep: dict) -> list:
    """Every number a cache entry could silently change (timing excluded: it is re-measured)."""
    return [(r["artifact"]["hash"], r["artifact"]["macs"], r["artifact"]["params"],
             r["measurements"]["ort"]["accuracy"], r["measurements"]["ort"]["agreement"])
            for r in [rep["baseline"], *rep["stages"]]]


# ------------------------------------------------------------------------------------------------
# corrupt cache entries of every kind


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One finished run (its cache and report) that each corruption case copies."""
    tmp = tmp_path_factory.mktemp("warm")
    p = write_yaml(tmp / "pipe.yaml", tiny_pipeline(tmp))
    r = run("run", str(p))
    assert r.exit_code == 0, r.output
    return tmp, report(tmp)


def _result_kind(path: Path) -> str:
    """What a cache file holds, told apart from entries that are not the pipeline's own records (e.g. a
    per-machine micro-benchmark): the three records' timing, one record's evaluation or facts."""
    if path.suffix == ".npy":
        return "array"
    if path.name == "artifact.json":
        return "torch" if (path.parent / "model.safetensors").is_file() else "onnx"
    obj = json.loads(path.read_bytes().partition(b"\n")[2])
    if isinstance(obj, list):
        return "latency" if len(obj) == 3 else "other"
    if "session" in obj:
        return "evaluation"
    return "facts" if "layer_precision" in obj else "other"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55  # a payload byte: the file stays readable, its content changes
    path.write_bytes(bytes(data))


def _edit_facts(path: Path) -> None:  # change the MACs as a hand edit would, keeping valid JSON
    head, _, payload = path.read_bytes().partition(b"\n")
    obj = json.loads(payload)
    obj["macs"] = 11
    path.write_bytes(head + b"\n" + json.dumps(obj).encode())


CASES = {
    "artifact weights changed": ("artifacts/*/model.safetensors", _flip),
    "artifact manifest edited": ("artifacts/*/artifact.json:torch",
                                 lambda p: p.write_text(p.read_text().replace('"producer"', '"producer" ', 1))),
    "facts JSON edited": ("results/*.json:facts", _edit_facts),
    "evaluation JSON not UTF-8": ("results/*.json:evaluation", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "evaluation array flipped": ("results/*.npy", _flip),
    "latency JSON truncated": ("results/*.json:latency", lambda p: p.write_bytes(p.read_bytes()[:40])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_entry_is_named_removed_and_recomputed(tmp_path, warm, case):
    src, first = warm
    shutil.copytree(src / "cache", tmp_path / "cache")
    pattern, damage = CASES[case]
    glob, _, kind = pattern.partition(":")
    victim = next(p for p in sorted((tmp_path / "cache").glob(glob)) if not kind or _result_kind(p) == kind)
    damage(victim)
    r = run("run", str(write_yaml(tmp_path / "pipe.yaml", tiny_pipeline(tmp_path))))
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if CORRUPT in ln]
    shown = victim.parent if victim.parent.parent.name == "artifacts" else victim
    assert len(warnings) == 1 and str(shown) in warnings[0], r.output
    rep = report(tmp_path)
    assert numbers(rep) == numbers(first)  # the number is recomputed, not taken from the damaged entry
    assert sum(rec["cache_hit"] for rec in [rep["baseline"], *rep["stages"]]) >= 2  # finished work kept
    assert run("cache", "verify", "--cache-dir", str(tmp_path / "cache")).output.count("0 corrupt") == 1


def test_cache_verify_and_gc(tmp_path, warm):
    src, _ = warm
    cache = tmp_path / "cache"
    shutil.copytree(src / "cache", cache)
    _flip(next(cache.glob("results/*.npy")))
    (cache / "tmp" / ("ab" * 32 + "-dead0001")).mkdir(parents=True)  # a killed run's work folder
    r = run("cache", "verify", "--cache-dir", str(cache))
    assert r.exit_code == 0 and "1 corrupt removed" in r.output and r.output.count(CORRUPT) == 1
    r = run("cache", "gc", "--cache-dir", str(cache))  # no budget: only orphaned temp folders go
    assert r.exit_code == 0 and "removed 1" in r.output and not any((cache / "tmp").iterdir())
    r = run("cache", "gc", "--cache-dir", str(cache), "--max-size", "0MB")
    assert r.exit_code == 0 and "kept 0 entries" in r.output and not any((cache / "artifacts").iterdir())
    r = run("cache", "gc", "--cache-dir", str(cache), "--max-age", "3 fortnights")
    assert r.exit_code == 2 and "--max-age" in r.output


def test_cached_files_are_world_readable(warm):
    src, _ = warm
    files = [p for p in (src / "cache").rglob("*") if p.is_file() and "locks" not in p.parts]
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files), \
        sorted({oct(p.stat().st_mode & 0o777) for p in files})


# ------------------------------------------------------------------------------------------------
# a run killed at each phase (os._exit: no cleanup, like kill -9)

KILL = {
    "baseline": "import compress.baseline as m\n"
                "def die(loaded, ds, wd, *a, **k):\n    (wd / 'half.bin').write_bytes(b'x'); os._exit(9)\n"
                "m.build_baseline = die\n",
    "stage": "import compress.stages.export_onnx as m\n"
             "def die(self, art, ctx):\n    (ctx.work_dir / 'half.onnx').write_bytes(b'x'); os._exit(9)\n"
             "m.ExportOnnx.run = die\n",
    "evaluation": "import compress.evaluation as m\n"
                  "def die(*a, **k):\n    os._exit(9)\n"
                  "m.run_outputs = die\n",
    "timing": "import compress.runtimes as m, compress.runtimes.timing as t\n"
              "def die(*a, **k):\n    os._exit(9)\n"
              "m.measure_interleaved = t.measure_interleaved = die\n",
}


def _cli_subprocess(patch: str, *args: str, **kw) -> subprocess.Popen:
    code = "import os, sys\n" + patch + "from compress.cli import main\nsys.argv = ['compress', *sys.argv[1:]]\nmain()\n"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT, **kw)


@pytest.mark.integration
@pytest.mark.parametrize("phase", list(KILL))
def test_killed_run_keeps_finished_work_and_resumes(tmp_path, tiny_yaml, phase):
    p = tiny_yaml()
    proc = _cli_subprocess(KILL[phase], "run", str(p))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 9, out
    tmp_dir = tmp_path / "cache" / "tmp"
    orphans = list(tmp_dir.iterdir()) if tmp_dir.is_dir() else []
    assert bool(orphans) == (phase in ("baseline", "stage")), orphans  # a half-built step leaves its work folder
    for o in orphans:  # an hour old: the next run removes it (a younger one might be a live run's)
        os.utime(o, (time.time() - 7200, time.time() - 7200))
    r = run("run", str(p))
    assert r.exit_code == 0, r.output
    cached = {"baseline": [], "stage": ["baseline", "fold (transform.fold_bn)"],
              "evaluation": ["baseline", "fold (transform.fold_bn)", "export (export.onnx)"],
              "timing": ["baseline", "fold (transform.fold_bn)", "export (export.onnx)"]}[phase]
    for label in cached:
        assert f"{label}: cached" in r.output, r.output
    assert not any(tmp_dir.iterdir()) if tmp_dir.is_dir() else True


# ------------------------------------------------------------------------------------------------
# concurrency and locks

SLOW_TRAINING = ("import time, compress.training as m\n_train = m.train\n"
                 "def slow(*a, **k):\n    time.sleep(4); return _train(*a, **k)\nm.train = slow\n")


@pytest.mark.integration
def test_concurrent_runs_train_once(tmp_path, tiny_yaml):
    """Two runs of one pipeline at once: the second waits for the first's baseline and reuses it."""
    p = tiny_yaml()
    a = _cli_subprocess(SLOW_TRAINING, "run", str(p), "-o", str(tmp_path / "a"))
    deadline = time.time() + 120
    while not list((tmp_path / "cache").glob("locks/*.owner")) and time.time() < deadline:
        time.sleep(0.1)
    b = _cli_subprocess(SLOW_TRAINING, "run", str(p), "-o", str(tmp_path / "b"))
    out_a, _ = a.communicate(timeout=300)
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert (out_a + out_b).count("trained baseline") == 1, out_a + out_b
    assert "waiting for another compress run" in out_b, out_b
    ra, rb = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert ra["baseline"]["artifact"]["hash"] == rb["baseline"]["artifact"]["hash"]


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    from compress.cache import Cache

    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from compress.cache import Cache
        with Cache(Path({str(tmp_path)!r})).lock("k" * 64):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    cache = Cache(tmp_path)
    assert cache.locked("k" * 64)
    proc.kill()  # SIGKILL: no cleanup, the lock file stays behind
    proc.wait()
    assert (tmp_path / "locks" / f"{'k' * 64}.lock").exists()
    t0 = time.monotonic()
    with cache.lock("k" * 64):
        assert time.monotonic() - t0 < 5
    assert not cache.locked("k" * 64)


# ------------------------------------------------------------------------------------------------
# what the user hands us: exit 2, one line naming the file and the field


def test_binary_pipeline_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    for cmd in ("validate", "run"):
        r = run(cmd, str(bad))
        assert r.exit_code == 2 and "p.yaml: not a text file" in one_error_line(r.output)


def test_binary_and_foreign_report_json(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_bytes(b"\xff\xd8\xff\xe0binary")
    r = run("report", str(bad))
    assert r.exit_code == 2 and "report.json: not a compress report" in one_error_line(r.output)
    bad.write_text('{"schema_version": 1}')
    r = run("report", "--format", "table", str(bad))
    assert r.exit_code == 2 and "not a compress report" in one_error_line(r.output)


def _user_files(tmp_path: Path) -> None:
    (tmp_path / "usermodel.py").write_text(
        "import torch\n"
        "def build(width=4):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.Linear(width, 10))\n")
    (tmp_path / "broken.py").write_text("import nosuchpackage_xyz\ndef build():\n    pass\n")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\xff\x00garbage")
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01not a checkpoint")
    import torch

    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "wrong.pt")
    torch.save({"model": torch.nn.Linear(64, 10)}, tmp_path / "pickled.pt")  # a module object, not a state dict
    np.savez(tmp_path / "nan.npz", x=np.full((20, 1, 8, 8), np.nan, np.float32), y=np.arange(20) % 10)
    np.savez(tmp_path / "wide.npz", x=np.zeros((20, 3, 9, 9), np.float32), y=np.arange(20) % 10)
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((20, 1, 8, 8), np.float32))
    (tmp_path / "afile").write_text("in the way")


USER = {"callable": "usermodel:build", "input_shape": [1, 1, 8, 8]}
BAD_INPUT = {
    "callable does not import": (dict(model={"callable": "broken:build", "input_shape": [1, 1, 8, 8]}),
                                 "model.callable: cannot import 'broken:build'"),
    "weights of another model": (dict(model={**USER, "weights": "wrong.pt"}), "model.weights: 'wrong.pt' does not"),
    "weights not a checkpoint": (dict(model={**USER, "weights": "garbage.pt"}), "is not a torch checkpoint"),
    "weights hold pickled objects": (dict(model={**USER, "weights": "pickled.pt"}), "never unpickles"),
    "corrupt onnx": (dict(model={"onnx": "corrupt.onnx", "input_shape": [1, 1, 8, 8]}, stages=[]),
                     "model.onnx: "),
    "npz key missing": (dict(data={"source": "npz", "path": "nolabels.npz", "x_key": "images"}),
                        "data.x_key: 'nolabels.npz' has no array 'images'"),
    "data of the wrong shape": (dict(data={"source": "npz", "path": "wide.npz"}), "data gives samples of shape"),
    "NaN data": (dict(data={"source": "npz", "path": "nan.npz"}), "NaN"),
    "accuracy gate without labels": (dict(data={"source": "npz", "path": "nolabels.npz"}, model={**USER},
                                          gates=[{"metric": "accuracy", "min": 50}]), "gates[0].metric: 'accuracy' needs labels"),
    "gate out of range": (dict(gates=[{"metric": "accuracy", "min": 101}]), "min: 101 is out of range for accuracy"),
    "unwritable output.dir": (dict(output={"dir": "afile/run", "cache_dir": "cache"}), "output.dir: cannot write"),
    "unwritable cache_dir": (dict(output={"dir": "run", "cache_dir": "afile/c"}), "output.cache_dir: cannot write"),
    "stage key typo": (dict(stages=[{"name": "q", "type": "export.onnx", "config": {"opste": 17}}]),
                       "did you mean 'opset'"),
    "gate metric typo": (dict(gates=[{"metric": "acuracy", "min": 50}]), "did you mean 'accuracy'"),
    "gate target typo": (dict(gates=[{"metric": "accuracy", "min": 50, "target": "or"}]), "did you mean 'ort'"),
    "zoo typo": (dict(model={"zoo": "resnet2", "input_shape": [1, 1, 8, 8]}), "did you mean 'resnet20'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_validate_and_run_at_start(tmp_path, case, monkeypatch):
    """validate catches it (exit 2, one line naming the field); run catches the same before any work."""
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("usermodel", None)
    overrides, needle = BAD_INPUT[case]
    cfg = tiny_pipeline(tmp_path, **overrides)
    p = write_yaml(tmp_path / "pipe.yaml", cfg)
    for cmd in ("validate", "run"):
        r = run(cmd, str(p))
        assert r.exit_code == 2, (cmd, r.output)
        line = one_error_line(r.output)
        assert needle in line, (cmd, line)
        assert "weights_only=False" not in r.output
        assert "▶" not in r.output  # nothing ran
    assert not (tmp_path / "cache" / "artifacts").exists()


def test_npz_with_images_and_labels_measures_accuracy(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(tmp_path / "d.npz", images=d.images[:300, None].astype(np.float32), labels=d.target[:300])
    cfg = tiny_pipeline(tmp_path, data={"source": "npz", "path": "d.npz"}, stages=[],
                        gates=[{"metric": "accuracy", "min": 0}])
    r = run("run", str(write_yaml(tmp_path / "pipe.yaml", cfg)))
    assert r.exit_code == 0, r.output
    assert "samples 'images', labels 'labels'" in r.output
    assert report(tmp_path)["baseline"]["measurements"]["ort"]["accuracy"] is not None


def test_label_free_run_says_so_in_one_line(tmp_path):
    _user_files(tmp_path)
    save_user_weights(tmp_path)
    cfg = tiny_pipeline(tmp_path, data={"source": "npz", "path": "nolabels.npz"}, stages=[],
                        model={**USER, "weights": "w.pt"})
    r = run("run", str(write_yaml(tmp_path / "pipe.yaml", cfg)))
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "no labels, so accuracy is not measured" in ln]
    assert len(lines) == 1 and lines[0].startswith("WARNING")


# ------------------------------------------------------------------------------------------------
# output for humans


def test_table_fits_80_columns_and_names_only_files_present(tmp_path, warm):
    from rich.console import Console

    from compress.report.console import print_report
    from compress.report.model import Report

    _, first = warm
    rep = Report.model_validate(first)
    from compress.report.model import GateResult

    rep.gates = [GateResult(metric="speedup", stage="export-long-name", target="ort", op=">=", threshold=1.25,
                            observed=1.868, ci_low=1.752, ci_high=2.062, confidence=0.95, rounds=33, margin=0.618, unit="x",
                            passed=True),
                 GateResult(metric="accuracy_drop", stage="export-long-name", target="ort", op="<=", threshold=1,
                            observed=None, margin=None, passed=False, detail="accuracy_drop was not measured")]
    for rec in rep.records():  # the widest realistic cells: long names, unstable marks, a failed gate's note
        rec.name = rec.name + "-long-name"
        for m in rec.measurements.values():
            m.latency.unstable = True

    class UI:
        out = Console(width=80, record=True, file=open(os.devnull, "w"))

        def warn(self, msg):
            pass

    ui = UI()
    print_report(ui, rep, tmp_path / "report.json")
    text = ui.out.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80 and "…" not in text, text
    for want in ("acc %", "agree %", "p50 ms", "speed-up", "size"):
        assert want in text, text
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if "baseline-" in ln)
    name = lines[first].split()[0]
    if name != "baseline-long-name":  # a long name folds onto the next line, never cut
        name += lines[first + 1].split()[0]
    assert name == "baseline-long-name", text
    assert "report.md" not in text and "model.onnx" not in text  # neither exists beside this report
    (tmp_path / "report.md").write_text("x")
    ui.out = Console(width=200, record=True, file=open(os.devnull, "w"))
    print_report(ui, rep, tmp_path / "report.json", wide=True)
    text = ui.out.export_text()
    assert "MACs" in text and "params" in text and "report.md beside it" in text


def test_damaged_training_checkpoint_is_never_resumed_from(tmp_path, caplog):
    import torch

    from compress.training import _load_checkpoint, _save_checkpoint

    ckpt = tmp_path / "checkpoints" / "k" / "distill.pt"
    _save_checkpoint(ckpt, {"step": 7, "w": torch.ones(3)})
    assert _load_checkpoint(ckpt)["step"] == 7
    _flip(ckpt)
    assert _load_checkpoint(ckpt) is None and not ckpt.exists()
    assert "corrupt training checkpoint removed" in caplog.text


def test_validate_checks_the_data_without_torch():
    """The quickstart resizes its data (torch's bilinear): validate checks the resized shape without it."""
    code = ("import sys; from compress.cli import main; sys.argv=['compress','validate','pipelines/quickstart.yaml']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy=[m for m in ('torch','onnxruntime','nncf','openvino') if m in sys.modules]\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "data 1797 samples, labeled" in r.stdout, r.stderr
