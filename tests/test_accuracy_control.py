"""Accuracy-aware quantization (compress/accuracy_control.py) and the CPU-picked reduce_range default."""
from __future__ import annotations

import pytest

from compress import accuracy_control as ac
from compress.errors import ConfigError
from compress.runtimes import environment


class FakeArt:
    def __init__(self, float_nodes):
        self.float_nodes = frozenset(float_nodes)


def _search(penalty: dict[str, float], max_drop: float, groups=None):
    """Agreement drops by ``penalty[node]`` for every quantized node: a known, additive sensitivity."""
    groups = groups or {k: [k] for k in penalty}
    built = []

    def build(float_nodes, tag):
        built.append(tag)
        return FakeArt(float_nodes)

    def evaluate(arts):
        return [{"agreement": 100.0 - sum(p for n, p in penalty.items() if n not in a.float_nodes),
                 "accuracy": None, "cosine": None} for a in arts]

    res = ac.keep_sensitive_in_float(groups, build, evaluate, {"accuracy": None}, FakeArt([]),
                                     ac.Objective("agreement", max_drop), log=lambda m: None)
    return res, built


def test_within_target_keeps_everything_quantized():
    res, built = _search({"a": 1.0, "b": 0.5}, max_drop=2.0)
    assert res["met"] and res["float_nodes"] == [] and built == [] and res["drop"] == 1.5


def test_keeps_the_most_sensitive_layers_float_until_the_target_holds():
    res, _ = _search({"a": 0.2, "b": 6.0, "c": 3.0, "d": 0.1}, max_drop=1.0)
    assert res["met"] and res["float_groups"] == ["b", "c"] and res["drop"] == pytest.approx(0.3)
    assert list(res["sensitivity"])[:2] == ["b", "c"]  # sorted by how much of the drop each removes
    assert res["sensitivity"]["b"] == pytest.approx(6.0)


def test_one_group_enough_takes_the_best_single():
    res, built = _search({"a": 0.2, "b": 6.0, "c": 0.5}, max_drop=1.0)
    assert res["float_groups"] == ["b"] and len(built) == 3  # only the sensitivity pass was needed


def test_unreachable_target_is_reported_not_met():
    res, _ = _search({"a": 2.0, "b": 3.0, "c": 1.0}, max_drop=-1.0)
    assert not res["met"] and res["float_groups"] == ["b", "a"]  # never all: one group stays quantized


def test_block_groups_and_metric_resolution():
    nodes = [("Pad_0", "Pad"), ("/stem/Conv", "Conv"), ("/stem/Relu", "Relu"), ("/blocks.0/conv/Conv", "Conv"),
             ("/blocks.0/act/Relu", "Relu"), ("/blocks.0/proj/Conv", "Conv"), ("/blocks.1/conv/Conv", "Conv"),
             ("/Add", "Add"), ("/fc/Gemm", "Gemm"), ("Softmax_7", "Softmax")]
    names = [n for n, _ in nodes]
    assert ac.layer_groups(nodes, "block") == {
        "stem": ["Pad_0", "/stem/Conv", "/stem/Relu"], "blocks.0": names[3:6], "blocks.1": ["/blocks.1/conv/Conv", "/Add"],
        "fc": ["/fc/Gemm", "Softmax_7"]}
    layers = ac.layer_groups(nodes, "layer")
    assert list(layers) == ["/stem/Conv", "/blocks.0/conv/Conv", "/blocks.0/proj/Conv", "/blocks.1/conv/Conv",
                            "/fc/Gemm"]
    assert layers["/stem/Conv"] == ["Pad_0", "/stem/Conv", "/stem/Relu"]
    assert sorted(n for g in layers.values() for n in g) == sorted(names)  # every node in exactly one group
    assert ac.resolve_metric("auto", True) == "accuracy" and ac.resolve_metric("auto", False) == "agreement"
    with pytest.raises(ConfigError):
        ac.resolve_metric("accuracy", False)
    assert ac.Objective("accuracy", 1).drop({"accuracy": 90.0}, {"accuracy": 88.5}) == 1.5
    assert ac.Objective("cosine", 0.01).drop({}, {"cosine": 0.97}) == pytest.approx(0.03)


@pytest.mark.parametrize("flags, machine, expected", [
    (["avx2", "fma"], "x86_64", True),             # AVX2 only: U8S8 can saturate -> 7-bit weights
    (["avx2", "avx512f", "avx512_vnni"], "x86_64", False),
    (["avx2", "avx_vnni"], "x86_64", False),
    ([], "aarch64", False),
])
def test_reduce_range_auto_follows_the_isa(monkeypatch, flags, machine, expected):
    cpu = {"cpu_model": "x", "physical_cores": 1, "cpu_flags": flags, "amx": False,
           "vnni": any(f in ("avx512_vnni", "avx_vnni") for f in flags)}
    monkeypatch.setattr(environment, "_cpu", lambda: cpu)
    monkeypatch.setattr(environment.platform, "machine", lambda: machine)
    value, why = environment.int8_reduce_range("auto")
    assert value is expected and "auto" in why
    assert environment.int8_reduce_range(True) == (True, "reduce_range: true (set in the pipeline)")


def test_max_drop_keeps_layers_float_through_the_measurement_service(tmp_path, tiny_yaml):
    """quantize.ptq with a deliberately bad calibration (51st percentile) misses max_drop; the stage keeps
    the most sensitive layers in float, measured in ONNX Runtime through ctx.measure, and what it measured
    is what the runner measures afterwards. On a 3-layer model the target is out of reach: it stops with one
    layer quantized and says NOT met."""
    import json

    from click.testing import CliRunner

    from compress.cli import main

    stage = {"name": "int8", "type": "quantize.ptq",
             "config": {"calibration_method": "percentile", "percentile": 51, "max_drop": 2,
                        "max_drop_metric": "agreement", "sensitivity": "layer"}}
    r = CliRunner().invoke(main, ["run", str(tiny_yaml(stages=[stage]))], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    rec = rep["stages"][0]
    acf = rec["facts"]["accuracy_control"]
    assert acf["drop_all_quantized"] > 2 and len(acf["sensitivity"]) == 3
    assert len(acf["float_groups"]) == 2 and acf["drop"] < acf["drop_all_quantized"]
    assert acf["met"] is (acf["drop"] <= 2) and ("NOT met" in r.output) is (not acf["met"])
    assert acf["speedup_all_quantized"] > 0 and acf["speedup_chosen"] > 0
    m = rec["measurements"]["ort"]
    assert m["agreement"] == pytest.approx(100 - acf["drop"])  # the runner measures what the stage chose
    assert rec["artifact"]["precision"] == "mixed" and rec["facts"]["int8_layers_runtime"] == 1
