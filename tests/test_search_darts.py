"""search.darts: mixed operations, derivation, the expected-latency term, first-order bi-level updates, and
the stage end to end with a fake measurement service (no timing here)."""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import get_args

import pytest
import torch

from compress.search import cells, darts


def _ir(**kw):
    kw = {"kernels": (3, 5), "expands": (1, 2), "stem": 4, "stages": ((4, 1, 1), (6, 1, 2)), "head": 8, **kw}
    return darts.InvertedResidualSpace(10, 1, **kw)


def _cells(**kw):
    kw = {"ops": ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"), "nodes": 2, "c": 4,
          "layout": "NR", **kw}
    return darts.CellSpace(10, 1, **kw)


def test_stage_op_names_match_the_space():
    from compress.stages.search_darts import CellOp

    assert get_args(CellOp) == cells.CELL_OPS


@pytest.mark.parametrize("space", [_cells(), _ir()], ids=["cells", "inverted_residual"])
def test_mixed_op_is_the_alpha_weighted_sum_of_its_candidates(space):
    torch.manual_seed(0)
    net = space.supernet(aux_skip=True)
    net.eval()
    for a in net.arch_parameters():
        a.data = torch.randn_like(a)
    m = next(m for m in net.mixed() if m.stride == 1 and m.c_in == m.c_out)
    x = torch.randn(2, m.c_in, 6, 6)
    w = torch.softmax(net.alphas[m.key], -1)
    expect = sum(w[i] * op(x) for i, op in enumerate(m.ops))
    net.beta = 0.0
    assert torch.allclose(m(x), expect, atol=1e-6)
    assert not torch.allclose(w, torch.full_like(w, 1 / len(w)))  # the weights are not trivially uniform
    net.beta = 0.3  # DARTS-: plus the auxiliary skip
    assert torch.allclose(m(x), expect + 0.3 * x, atol=1e-6)


def test_deriving_picks_the_arg_max_operation_per_layer():
    space = _ir()
    net = space.supernet(aux_skip=False)
    g = torch.Generator().manual_seed(3)
    for a in net.arch_parameters():
        a.data = torch.randn(a.shape, generator=g)
    geno = space.derive(net)
    for m, op in zip(net.mixed(), geno):
        assert op == m.candidates[int(torch.argmax(net.alphas[m.key]))]
    model = cells.ir_network(geno, **{k: v for k, v in space.recipe(geno)["kwargs"].items() if k != "genotype"})
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_deriving_cells_keeps_two_strongest_edges_with_their_arg_max_non_zero_op():
    space = _cells()
    net = space.supernet(aux_skip=False)
    ops = list(space.ops)
    # node 0 reads inputs 0, 1 (edges 0, 1); node 1 reads 0, 1, 2 (edges 2, 3, 4)
    rows = {0: [0, 3, 1, 0, 0], 1: [0, 0, 0, 1, 4], 2: [9, 1, 0, 0, 0.5], 3: [0, 0, 2, 0, 0], 4: [0, 0, 0, 5, 0]}
    for kind in ("normal", "reduce"):
        for e, r in rows.items():
            net.alphas[f"{kind}:{e}"].data = torch.tensor(r, dtype=torch.float32)
    geno = space.derive(net)
    # node 1: edge 2 is dominated by 'none' (its best real op is weak), so edges 3 and 4 are kept
    want = [["max_pool_3x3", 0], ["dil_conv_3x3", 1], ["skip_connect", 1], ["sep_conv_3x3", 2]]
    assert geno == {"normal": want, "reduce": want}
    for op, _ in want:
        assert op in ops and op != "none"
    model = cells.cell_network(geno, num_classes=10, in_channels=1, c=4, layout="NR", nodes=2)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_expected_latency_equals_the_hand_computed_sum_on_a_synthetic_table():
    space = _ir(kernels=(3,), expands=(1, 2), stages=((4, 1, 1), (6, 1, 1)), skip=True)
    net = space.supernet(aux_skip=False)
    darts.probe_shapes(net, (1, 1, 8, 8))
    m0, m1 = net.mixed()
    assert m0.candidates == ["mb_k3_e1", "mb_k3_e2", "skip"] and m1.candidates == ["mb_k3_e1", "mb_k3_e2"]
    table = {darts.signature(m, op): v for m, vals in ((m0, (1.0, 2.0, 0.1)), (m1, (3.0, 5.0)))
             for op, v in zip(m.candidates, vals)}
    assert len(table) == 5  # the two layers see different shapes
    darts.attach_latency(net, table, scale=2.0)
    for m, p in zip((m0, m1), [(0.5, 0.25, 0.25), (0.1, 0.9)]):
        net.alphas[m.key].data = torch.log(torch.tensor(p))
    hand = 2.0 * ((0.5 * 1 + 0.25 * 2 + 0.25 * 0.1) + (0.1 * 3 + 0.9 * 5))
    assert math.isclose(float(darts.expected_latency(net)), hand, rel_tol=1e-6)
    # in the loss: relative to the uniform mixture, or as a penalty above a budget on b + E
    ds = darts.split_for_search(_synthetic(), 0.5, 0)
    hook = darts.ArchStep(net, ds, darts.ArchConfigValues(latency_weight=3.0), total_steps=4)
    uniform = 2.0 * ((1.0 + 2.0 + 0.1) / 3 + (3.0 + 5.0) / 2)
    assert math.isclose(hook.e0, uniform, rel_tol=1e-6)
    assert math.isclose(float(hook.latency_term()[1]), 3.0 * hand / uniform, rel_tol=1e-6)
    budget = darts.ArchStep(net, ds, darts.ArchConfigValues(latency_weight=3.0, latency_budget_ms=5.0,
                                                            overhead_ms=0.5), total_steps=4)
    assert math.isclose(float(budget.latency_term()[1]), 3.0 * ((0.5 + hand) / 5.0 - 1), rel_tol=1e-6)
    # the derived net's prediction: a * (sum of its ops' entries) + b
    lt = darts.LatencyTable(table, a=2.0, b=0.5)
    assert math.isclose(lt.predict(space.chosen(net, ["skip", "mb_k3_e2"])), 2.0 * (0.1 + 5.0) + 0.5, rel_tol=1e-9)


def _synthetic(n=96):
    from compress.data.dataset import make_synthetic

    return make_synthetic(n, (1, 8, 8), num_classes=10, seed=0, splits={"train": 0.7, "calibration": 0.1,
                                                                        "eval": 0.2})


def test_first_order_updates_touch_only_alpha_on_the_architecture_split():
    ds = _synthetic()
    split = darts.split_for_search(ds, 0.5, seed=0)
    w_idx, a_idx = set(split.splits["train"].tolist()), set(split.splits["arch"].tolist())
    assert not w_idx & a_idx and w_idx | a_idx == set(ds.splits["train"].tolist())
    space = _cells()
    net = space.supernet(aux_skip=True)
    for m in net.mixed():
        m.latency = torch.ones(len(m.candidates))
    hook = darts.ArchStep(net, split, darts.ArchConfigValues(batch_size=16, latency_weight=1.0), total_steps=10)
    assert torch.equal(hook.x, torch.from_numpy(split.split("arch")[0]))  # it reads the arch split only
    weights = {k: v.detach().clone() for k, v in net.net.named_parameters()}
    alphas = [a.detach().clone() for a in net.arch_parameters()]
    net.train()
    hook.arch_step()
    assert hook.steps == 1 and len(hook.seen[0]) == 16
    assert all(torch.equal(v, weights[k]) for k, v in net.net.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), alphas))
    assert not any(a.requires_grad for a in net.arch_parameters())
    # and the weight step of the one training loop leaves the alphas alone
    from compress.training import TrainConfig, train

    before = [a.detach().clone() for a in net.arch_parameters()]
    train(net, split, TrainConfig(steps=2, batch_size=16, threads=1))
    assert all(torch.equal(a, b) for a, b in zip(net.arch_parameters(), before))
    assert any(not torch.equal(v, weights[k]) for k, v in net.net.named_parameters())


def test_darts_minus_beta_decays_to_zero_and_bare_keeps_it_off():
    ds = darts.split_for_search(_synthetic(), 0.5, 0)
    for mode, first in (("darts-", 1.0), ("none", 0.0)):
        net = _cells().supernet(aux_skip=mode == "darts-")
        for m in net.mixed():
            m.latency = torch.zeros(len(m.candidates))
        hook = darts.ArchStep(net, ds, darts.ArchConfigValues(anti_collapse=mode, start=0.99), total_steps=4)
        assert net.beta == first
        hook(net, 2)
        assert net.beta == (0.5 if mode == "darts-" else 0.0)
        hook(net, 4)
        assert net.beta == 0.0
    assert not any(m.aux_skip for m in _cells().supernet(aux_skip=False).mixed())


class FakeMeasure:
    """p50 = 1 us + 1 ns per MAC: a deterministic stand-in for the measurement service."""

    def __init__(self):
        self.calls = []

    def latency(self, arts, target=None, policy=None):
        from compress.artifact import build_module
        from compress.facts import torch_facts

        self.calls.append(len(arts))
        return [SimpleNamespace(p50_ms=1e-3 + 1e-6 * torch_facts(build_module(a), a.input_shape)["macs"])
                for a in arts]


@pytest.mark.parametrize("space", ["inverted_residual", "cells"])
def test_stage_searches_validates_and_hands_on_a_rebuildable_artifact(space, tmp_path):
    import json

    from compress.artifact import Artifact, build_module
    from compress.context import StageContext
    from compress.export import ExportConfig
    from compress.stages.search_darts import SearchDarts, SearchDartsConfig

    ds = _synthetic(80)
    art = Artifact(format="torch", precision="float32", dir=tmp_path, files={}, file_hashes={},
                   input_shape=(1, 1, 8, 8), recipe={"callable": "compress.zoo.tiny:tiny_cnn",
                                                      "kwargs": {"num_classes": 10, "in_channels": 1, "width": 4}})
    ctx = StageContext(dataset=ds, work_dir=tmp_path / "wd", export=ExportConfig(), base_dir=tmp_path,
                       stage_name="darts", log=lambda m: None)
    ctx.measure = FakeMeasure()
    cfg = SearchDartsConfig(space=space, train={"steps": 3, "batch_size": 16}, retrain={"steps": 2, "batch_size": 16},
                            arch={"batch_size": 16, "start": 0.0}, seeds=2,
                            cells={"ops": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"], "nodes": 2,
                                   "channels": 4, "layout": "NR"},
                            inverted_residual={"kernels": [3], "expands": [1, 2], "stem": 4,
                                               "stages": [[4, 1, 1], [6, 1, 2]], "head": 8})
    out = SearchDarts(cfg).run(art, ctx)
    f = out.facts
    assert out.recipe["callable"].startswith("compress.search.cells:")
    assert out.recipe["kwargs"]["genotype"] == f["genotype"]
    json.dumps(out.recipe)  # a plain recipe, no pickles
    model = build_module(out)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert f["search_cost"]["weight_steps"] == 3 and f["search_cost"]["arch_steps"] == 3
    assert f["search_cost"]["artifacts_timed"] == sum(ctx.measure.calls) and len(ctx.measure.calls) == 2
    assert f["from_scratch"]["seeds"] == [0, 1]
    for name in ("searched", "baseline"):
        assert f["from_scratch"][name]["accuracy"]["n"] == 2
    lat = f["latency"]
    assert lat["predicted_ms"] > 0 and lat["measured_ms"] > 0 and lat["baseline_measured_ms"] > 0
    assert 0.0 <= f["skip_share"] <= 1.0


def test_stage_rejects_an_edited_input_without_a_baseline(tmp_path):
    from compress.artifact import Artifact
    from compress.errors import StageError
    from compress.stages.search_darts import SearchDarts, SearchDartsConfig

    art = Artifact(format="torch", precision="float32", dir=tmp_path, files={}, file_hashes={}, input_shape=(1, 1, 8, 8),
                   recipe={"callable": "compress.zoo.tiny:tiny_cnn", "kwargs": {}},
                   edits=({"replay": "x:y", "params": {}},))
    with pytest.raises(StageError, match="put search.darts first"):
        SearchDarts(SearchDartsConfig()).baseline_recipe(art)
    cfg = SearchDartsConfig(baseline={"zoo": "tiny_cnn", "kwargs": {"width": 4}})
    assert SearchDarts(cfg).baseline_recipe(art)["callable"] == "compress.zoo.tiny:tiny_cnn"


def test_latency_table_subtracts_the_per_call_cost_of_an_identity(tmp_path):
    from compress.artifact import import_callable
    from compress.facts import torch_facts

    space = _cells(ops=("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"))
    net = space.supernet(aux_skip=False)
    darts.probe_shapes(net, (1, 1, 8, 8))
    fake = FakeMeasure()  # p50 = 1 us per call + 1 ns per MAC
    table = darts.build_latency_table(space, net, fake.latency, tmp_path, (1, 1, 8, 8))
    assert len(fake.calls) == 1  # ops, identities and calibration networks in one interleaved call
    for m in net.mixed():
        for op in m.candidates:
            if op == "none":
                continue
            mod = import_callable("compress.search.cells:single_op")(space.name, op, m.c_in, m.c_out, m.stride)
            macs = torch_facts(mod, (1, m.c_in, *m.in_hw))["macs"]
            assert math.isclose(table.table[darts.signature(m, op)], 1e-6 * macs, abs_tol=1e-9)
    assert table.calibration[0]["genotype"]["normal"][0][0] == "skip_connect"  # the cheapest: skip-heavy
