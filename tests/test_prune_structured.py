"""prune.structured: exact channel counts, history replay, awkward topologies, targets."""
from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from compress.artifact import build_module, save_torch
from compress.context import StageContext
from compress.data import Dataset
from compress.export import ExportConfig, export_onnx
from compress.runtimes.base import Runtime, onnx_path
from compress.runtimes.onnxruntime import OrtTarget
from compress.stages.prune_structured import (
    PruneStructured, PruneStructuredConfig, history_json, make_pruner, output_layers, replay,
)
from compress.zoo import get


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, then a depthwise conv and a residual add."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 3, padding=1, groups=40), nn.BatchNorm2d(40), nn.ReLU())
        self.pw = nn.Conv2d(40, 40, 1)
        self.fc = nn.Linear(40, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = x + self.pw(self.dw(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def concat_net(num_classes: int = 10) -> ConcatNet:
    return ConcatNet(num_classes)


def _cfg(**kw) -> PruneStructuredConfig:
    kw.setdefault("finetune", None)
    return PruneStructuredConfig(**kw)


def _widths(model) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("round_to,expected", [(None, {"features.0": 11, "features.3": 22}),
                                               (8, {"features.0": 8, "features.3": 16}),
                                               (4, {"features.0": 8, "features.3": 20})])
def test_exact_channel_counts_from_ratio_and_round_to(round_to, expected):
    # 16 and 32 channels at ratio 0.3 keep floor(16 * 0.7) = 11 and floor(32 * 0.7) = 22, rounded down to round_to
    model = get("tiny_cnn")(num_classes=10, in_channels=1, width=16).eval()
    pruner = make_pruner(model, _cfg(pruning_ratio=0.3, round_to=round_to), (1, 1, 8, 8), 0.3, 1)
    pruner.step()
    assert _widths(model) == expected
    assert model.fc.in_features == expected["features.3"] and model.fc.out_features == 10


def test_head_is_found_and_kept():
    model = get("mobilenetv2")(num_classes=7, small_input=True).eval()
    assert output_layers(model, torch.zeros(1, 3, 16, 16)) == ["classifier.1"]
    pruner = make_pruner(model, _cfg(pruning_ratio=0.5), (1, 3, 16, 16), 0.5, 1)
    pruner.step()
    assert model.classifier[1].out_features == 7


def test_ignored_and_per_layer_ratios():
    model = get("resnet20")(num_classes=10, in_channels=1).eval()
    before = _widths(model)
    cfg = _cfg(pruning_ratio=0.5, round_to=None, ignored=[r"^layers\.0\."], ratios={r"^layers\.2\.0\.conv1$": 0.25})
    pruner = make_pruner(model, cfg, (1, 1, 16, 16), 0.5, 1)
    pruner.step()
    after = _widths(model)
    assert after["layers.0.0.conv1"] == before["layers.0.0.conv1"] == 16
    assert after["layers.1.0.conv1"] == 16  # 32 at ratio 0.5
    assert after["layers.2.0.conv1"] == 48  # 64 at the override 0.25


@pytest.mark.parametrize("name,kwargs,shape", [
    ("resnet20", {"num_classes": 10, "in_channels": 1}, (1, 1, 16, 16)),           # residual adds
    ("mobilenetv2", {"num_classes": 10, "small_input": True}, (1, 3, 16, 16)),     # depthwise + adds
    ("test_prune_structured:concat_net", {}, (1, 1, 8, 8)),                  # concat + depthwise + add
])
def test_history_replays_and_exports(tmp_path, name, kwargs, shape):
    import onnxruntime as ort

    from compress.artifact import import_callable

    build = import_callable(name) if ":" in name else get(name)
    torch.manual_seed(0)
    model = build(**kwargs).eval()
    pruner = make_pruner(model, _cfg(pruning_ratio=0.4, iterative_steps=2), shape, 0.4, 2)
    pruner.step()
    pruner.step()
    history = history_json(pruner)
    fresh = build(**kwargs).eval()
    replay(fresh, tmp_path, history, list(shape))
    fresh.load_state_dict(model.state_dict(), strict=True)  # same architecture
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))  # same weights, same function
    onnx = export_onnx(fresh, shape, tmp_path / "m.onnx", ExportConfig())
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert abs(got - model(x).detach().numpy()).max() < 1e-4
    assert sum(m.out_channels for m in fresh.modules() if isinstance(m, nn.Conv2d)) < \
        sum(m.out_channels for m in build(**kwargs).modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------------------------------------------
# the stage, through an artifact


def _artifact(tmp_path, width=16):
    from compress.artifact import Artifact

    torch.manual_seed(0)
    model = get("tiny_cnn")(num_classes=10, in_channels=1, width=width).eval()
    like = Artifact(format="torch", precision="float32", dir=tmp_path, files={}, file_hashes={},
                    input_shape=(1, 1, 8, 8), recipe={"callable": "compress.zoo.tiny:tiny_cnn",
                                                      "kwargs": {"num_classes": 10, "in_channels": 1, "width": width}})
    return save_torch(model, tmp_path / "in", like=like, producer="baseline")


def _ctx(tmp_path, **kw):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:300, None].astype("float32") / 8.0) - 1.0
    ds = Dataset.from_arrays(x, d.target[:300].astype("int64"), source_desc="digits")
    return StageContext(dataset=ds, work_dir=tmp_path / "out", export=ExportConfig(), base_dir=tmp_path,
                        stage_name="prune", log=lambda m: None, **kw)


def test_stage_ratio_rebuilds_from_history(tmp_path):
    art = _artifact(tmp_path)
    cfg = PruneStructuredConfig(pruning_ratio=0.5, round_to=None, iterative_steps=2,
                                finetune={"steps": 3, "batch_size": 16, "threads": 1})
    out = PruneStructured(cfg).run(art, _ctx(tmp_path))
    assert out.facts["kept_channels"]["features.0"] == [8, 16]
    assert out.facts["macs_after"] < out.facts["macs_before"] / 3
    assert [s["step"] for s in out.facts["steps"]] == [1, 2] and out.facts["steps"][0]["finetune"]["kd"]
    rebuilt = build_module(out)  # recipe -> pruning history edit -> weights (strict)
    assert _widths(rebuilt) == {"features.0": 8, "features.3": 16}


def test_stage_macs_target(tmp_path):
    art = _artifact(tmp_path)
    cfg = PruneStructuredConfig(macs={"ratio": 0.5}, round_to=None, finetune=None, search_step=0.1)
    out = PruneStructured(cfg).run(art, _ctx(tmp_path))
    assert out.facts["macs_after"] <= 0.5 * out.facts["macs_before"]
    # the smallest searched ratio that holds: one bisection step less would not
    misses = [p for p in out.facts["search"] if not p["meets"]]
    assert misses and max(p["ratio"] for p in misses) < out.facts["pruning_ratio"]
    assert not (tmp_path / "out" / "candidates").exists()


def test_config_needs_exactly_one_target():
    with pytest.raises(ValueError, match="exactly one target"):
        PruneStructuredConfig()
    with pytest.raises(ValueError, match="exactly one target"):
        PruneStructuredConfig(pruning_ratio=0.5, macs={"ratio": 0.5})
    with pytest.raises(ValueError, match="exactly one of ratio or ms"):
        PruneStructuredConfig(latency={"ratio": 0.5, "ms": 3})
    with pytest.raises(ValueError, match="valid regular expression"):
        PruneStructuredConfig(pruning_ratio=0.5, ratios={"(": 0.3})


# ---------------------------------------------------------------------------------------------------
# a latency target on a fake runtime whose latency is a known function of the channels


class _Clock:
    now = 0.0

    @classmethod
    def __call__(cls) -> float:
        return cls.now


def conv_cost_ms(onnx_path) -> float:
    """The fake runtime's latency: 0.2 ms + 1 ms per 10k convolution weights (i.e. of the channel counts)."""
    import numpy as np
    import onnx

    g = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in g.initializer}
    n = sum(int(np.prod(inits[nd.input[1]].dims)) for nd in g.node if nd.op_type == "Conv" and nd.input[1] in inits)
    return 0.2 + n / 1e4


class FakeTarget(OrtTarget):
    """ONNX Runtime's options under another runtime name."""

    runtime: Literal["fake"] = "fake"


class FakeRuntime(Runtime):
    """Runs outputs in ONNX Runtime, but one timed call costs ``conv_cost_ms`` on a virtual clock."""

    name = "fake"
    Target = FakeTarget

    def open(self, model, target, *, base_dir=None):
        from compress.runtimes.onnxruntime import OnnxRuntime

        sess = OnnxRuntime().open(model, target)
        cost = conv_cost_ms(onnx_path(model)) / 1e3

        def runner(x):
            def call():
                _Clock.now += cost
            return call

        sess.runner = runner
        return sess

    def versions(self):
        return {}

    def optimized_op_counts(self, onnx_path, target):
        return {}


def test_latency_target_stops_on_a_fake_runtime(tiny_yaml, tmp_path, monkeypatch, add_runtime):
    import json

    from click.testing import CliRunner

    from compress.cli import main
    from compress.runtimes import timing

    add_runtime(FakeRuntime)
    monkeypatch.setitem(timing.measure_interleaved.__kwdefaults__, "clock", _Clock())
    from conftest import FAST_TIMING

    path = tiny_yaml(
        model={"zoo": "tiny_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 32},
               "input_shape": [1, 1, 8, 8], "train": {"steps": 2, "batch_size": 32}},
        targets=[{"name": "fake-cpu", "runtime": "fake", "timing": FAST_TIMING}],
        stages=[{"name": "prune", "type": "prune.structured", "config": {
            "latency": {"ratio": 0.5, "target": "fake-cpu"}, "finetune": None, "round_to": None,
            "search_step": 0.1, "refine": 2}}])
    r = CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    facts = rep["stages"][0]["facts"]
    search = facts["search"]
    # it stepped up in 0.1 until the target first held, then bisected the bracket twice
    steps = [p["ratio"] for p in search]
    first = next(i for i, p in enumerate(search) if p["meets"])
    assert steps[:first + 1] == pytest.approx([0.1 * (i + 1) for i in range(first + 1)])
    assert len(search) == first + 1 + 2 and all(not p["meets"] for p in search[:first])
    # the chosen ratio is the smallest candidate that met the target; the measured ratio is the function's
    chosen = min(p["ratio"] for p in search if p["meets"])
    assert facts["pruning_ratio"] == pytest.approx(chosen)
    assert max(p["ratio"] for p in search if not p["meets"]) < chosen
    before = conv_cost_ms(rep["baseline"]["artifact"]["onnx_path"])
    after = conv_cost_ms(rep["stages"][0]["artifact"]["onnx_path"])
    assert facts["latency"]["latency_ratio"] == pytest.approx(after / before, rel=1e-3)
    assert facts["latency"]["latency_ratio"] <= 0.5
    assert facts["realised_vs_macs"] > 0


def test_bn_recalibration_after_pruning_keeps_momentum_and_changes_statistics(tmp_path):
    from compress.training import recalibrate_bn

    model = get("resnet20")(num_classes=10, in_channels=1).eval()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.1
    make_pruner(model, _cfg(pruning_ratio=0.5), (1, 1, 16, 16), 0.5, 1).step()
    before = model.layers[1][0].bn1.running_mean.clone()
    ds = _ctx(tmp_path).dataset
    import numpy as np

    big = Dataset.from_arrays(np.repeat(np.repeat(ds.x, 2, axis=2), 2, axis=3), ds.y)
    recalibrate_bn(model, big, batches=2, batch_size=16)
    assert not torch.equal(model.layers[1][0].bn1.running_mean, before)
    assert {bn.momentum for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)} == {0.1}
