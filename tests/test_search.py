"""The search machinery: weight sharing is exact, the latency sum rule on a synthetic runtime, strategies
are deterministic under a seed, NSGA-II/hypervolume behave, Ray gives the in-process front."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.search import latency as lat
from compress.search import seams
from compress.search.space import load_space
from compress.search.strategy import Candidate, hypervolume, pareto_front, run_strategy

TINY_MB = dict(in_channels=1, num_classes=10, input_size=8, stages=[[8, 1], [12, 2]], stem_channels=8,
               head_channels=16, depths=[1, 2], expands=[2, 3], kernels=[3, 5], widths=[0.75, 1.0],
               resolutions=[6, 8])


def _perturb_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("family,kwargs", [
    ("inverted_residual", TINY_MB),
    ("residual", dict(input_size=8, stages=[[8, 1], [16, 2]], stem_channels=8, resolutions=[6, 8])),
])
def test_extracted_subnet_equals_supernet_with_config_active(family, kwargs):
    space = load_space(family, kwargs)
    sup = space.supernet()
    _perturb_bn(sup)
    sup.eval()
    x = torch.randn(3, 1, 8, 8)
    rng = np.random.default_rng(0)
    configs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(6)]
    sizes = set()
    for c in configs:
        sup.activate(c)
        with torch.no_grad():
            want = sup(x)
            sub = space.extract(sup, c)
            got = sub(x)
        assert torch.allclose(want, got, atol=1e-5), (c, (want - got).abs().max())
        # a standalone model of plain layers, smaller than the supernet unless it is the largest
        assert not any(hasattr(m, "active") for m in sub.modules())
        sizes.add(sum(p.numel() for p in sub.parameters()))
        # and it rebuilds from its recipe (no pickles) to the same shapes
        from compress.artifact import import_callable

        rebuilt = import_callable(space.recipe(c)["callable"])(**space.recipe(c)["kwargs"])
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sub.state_dict().items()}
    sup.activate(None)
    assert len(sizes) > 3  # the configs really differ
    assert max(sizes) == sum(p.numel() for p in sup.parameters())


def test_space_operators_and_blocks_cover_every_config():
    space = load_space("inverted_residual", TINY_MB)
    rng = np.random.default_rng(1)
    table = {b.key for b in lat.all_blocks(space)}
    pairs = seams.representative_pairs(space, lat.covering(space))
    for _ in range(50):
        c = space.sample(rng)
        assert space.canonical(c) == c
        m = space.mutate(c, rng, 0.0)
        assert space.key(m) != space.key(c)  # mutation always changes the network
        assert all(b.key in table for b in space.blocks(c))  # the table has every block a subnet runs
        assert set(seams.seams(space, c)) <= set(pairs)  # ... and a measured pair for every seam it has


def test_pruned_view_reads_the_widths_the_structured_prune_leaves():
    from compress.artifact import import_callable
    from compress.search.pruned import PrunedView
    from compress.stages.prune_structured import PruneStructuredConfig, make_pruner

    space = load_space("inverted_residual", {**TINY_MB, "resolutions": [8]})

    def prune(model):
        cfg = PruneStructuredConfig(pruning_ratio=0.5, round_to=4, finetune=None)
        make_pruner(model, cfg, (1, 1, 8, 8), 0.5, 1).step()
        return model

    view = PrunedView(space, prune)
    rng = np.random.default_rng(3)
    for c in [space.largest()] + [space.sample(rng) for _ in range(3)]:
        pruned, plain = view.blocks(c), space.blocks(c)
        assert [b.kind for b in pruned] == [b.kind for b in plain]
        # the chained blocks rebuild the pruned network: same shapes at every seam, same parameter count
        x, params = torch.zeros(1, 1, 8, 8), 0
        for b in pruned:
            assert tuple(x.shape) == b.input_shape
            blk = import_callable(b.recipe["callable"])(**b.recipe["kwargs"]).eval()
            params += sum(p.numel() for p in blk.parameters())
            x = blk(x)
        assert params == sum(p.numel() for p in view.model(c).parameters())
        assert params < sum(p.numel() for p in space.extract(space.supernet(), c).parameters())
        assert any("hidden" in b.recipe["kwargs"] for b in pruned)  # hidden widths are the prune's, not the config's


def test_a_seam_pair_is_the_two_blocks_in_sequence():
    from compress.artifact import import_callable

    space = load_space("inverted_residual", TINY_MB)
    c = space.largest()
    blocks = space.blocks(c)
    pair = seams.pair_block(blocks[1], blocks[2])
    assert pair.input_shape == blocks[1].input_shape
    torch.manual_seed(0)
    model = import_callable(pair.recipe["callable"])(**pair.recipe["kwargs"]).eval()
    first, second = model
    x = torch.randn(blocks[1].input_shape)
    with torch.no_grad():
        mid = first(x)
        assert tuple(mid.shape) == blocks[2].input_shape  # the tensor crossing the seam has the keyed shape
        assert torch.equal(model(x), second(mid))
    assert len(seams.seams(space, c)) == len(blocks) - 1


# --------------------------------------------------------------------------------------------------
# the latency sum rule on a synthetic runtime (deterministic: a fake clock advanced by each inference)

CALL_OVERHEAD_S = 2e-6


def _graph_cost(path) -> float:
    """Synthetic cost of one inference: per node 0.5 us + 1 ns per weight element per output pixel."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: math.prod(i.dims) for i in m.graph.initializer}
    cost = 0.0
    for node in m.graph.node:
        pixels = math.prod(shapes.get(node.output[0], [1, 1])[2:]) or 1
        cost += 0.5e-6 + 1e-9 * sum(inits.get(i, 0) for i in node.input) * pixels
    return cost


@pytest.fixture
def synthetic_runtime(monkeypatch, add_runtime):
    from compress.runtimes import timing
    from compress.runtimes.base import Runtime, Session, onnx_path

    clock = [0.0]

    class SynthSession(Session):
        input_name = "input"

        def __init__(self, path):
            self.cost = CALL_OVERHEAD_S + _graph_cost(path)
            self.info = {"runtime": "synthetic"}

        def infer(self, x):
            clock[0] += self.cost
            return np.zeros((len(x), 10), np.float32)

        def close(self):
            pass

    class SynthRuntime(Runtime):
        name = "synthetic"

        def open(self, model, target, *, base_dir=None):
            return SynthSession(onnx_path(model))

        def versions(self):
            return {}

    add_runtime(SynthRuntime)
    monkeypatch.setitem(timing.measure_interleaved.__kwdefaults__, "clock", lambda: clock[0])
    return clock


def _measure_service(tmp_path, runtime="synthetic"):
    from compress.cache import Cache
    from compress.config import EvaluationConfig, TargetConfig
    from compress.data import Dataset
    from compress.export import ExportConfig
    from compress.measure import Measure

    ds = Dataset.from_arrays(np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32),
                             np.arange(32) % 10)
    timing = {"warmup_runs": 1, "warmup_seconds": 0.0, "min_runs": 3, "max_runs": 5, "min_seconds": 0.0,
              "max_seconds": 10.0, "block": 1}
    target = TargetConfig(name="synth", runtime=runtime, timing=timing)
    return Measure(Cache(tmp_path / "cache"), targets=[target], dataset=ds, export=ExportConfig(),
                   evaluation=EvaluationConfig(), base_dir=tmp_path)


def test_latency_sum_rule_on_a_synthetic_runtime(tmp_path, synthetic_runtime):
    # one resolution: ONNX shape inference (which the synthetic cost uses) cannot size a Resize output
    space = load_space("inverted_residual", {**TINY_MB, "resolutions": [8]})
    m = _measure_service(tmp_path)
    rng = np.random.default_rng(0)
    calibration = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(6)]
    holdout = [space.sample(rng) for _ in range(12)]
    model, rows = lat.build(space, lambda arts: m.latency(arts), tmp_path / "work", input_shape=(1, 1, 8, 8),
                            calibration=calibration, holdout=holdout)
    assert model.kind == "table" and len(model.table) == len(lat.all_blocks(space))
    # each block's entry is its own cost: a network's true cost is the sum of its blocks' node costs
    plain = lat.validate([r["sum_ms"] for r in rows], [r["measured_ms"] for r in rows])
    seamed = lat.validate([r["base_ms"] for r in rows], [r["measured_ms"] for r in rows])
    fitted = lat.validate([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    assert plain["bias_pct"] > 2  # each isolated block pays the per-call overhead again: the plain sum is high
    # the measured seams remove that overcount without any fit (within a node's cost of the head/stem export)
    assert abs(seamed["bias_pct"]) < plain["bias_pct"] / 5
    assert set(model.seams) and all(v == pytest.approx(CALL_OVERHEAD_S * 1e3, abs=1e-3) for v in model.seams.values())
    assert fitted["mape_pct"] < 1.0 and fitted["mape_pct"] < plain["mape_pct"]
    assert fitted["kendall_tau"] > 0.9
    assert model.correction == "affine" and model.a == pytest.approx(1.0, abs=0.05)
    # MACs/params are sums over blocks and match the extracted model's parameter count
    c = holdout[0]
    params = sum(p.numel() for p in space.extract(space.supernet(), c).parameters())
    assert model.counts(space, c)["params"] == params


# --------------------------------------------------------------------------------------------------
# strategies


def _toy_problem():
    space = load_space("inverted_residual", TINY_MB)

    def evaluate(configs):  # a deterministic "accuracy" that grows with capacity, with a twist
        return [50 + 40 * float(np.mean(space.encode(c))) - 5 * (c["k0_0"] == 5) for c in configs]

    def latency(c):
        return 1.0 + float(np.dot(space.encode(c), np.linspace(1, 2, len(space.encode(c)))))

    return space, evaluate, latency


@pytest.mark.parametrize("strategy", ["evolution", "nsga2", "random"])
def test_strategies_are_deterministic_under_a_seed(strategy):
    space, evaluate, latency = _toy_problem()
    runs = [run_strategy(strategy, space, evaluate, latency, lambda c: latency(c) < 30, budget=40, seed=s,
                         population=8, batch=4) for s in (3, 3, 4)]
    keys = [[space.key(c.config) for c in r] for r in runs]
    assert keys[0] == keys[1]
    assert keys[0] != keys[2]
    assert len(runs[0]) == 40 and len(set(keys[0])) == 40  # exactly the budget, all distinct


def test_constraints_are_respected_and_nsga2_beats_random_on_a_toy_problem():
    space, evaluate, latency = _toy_problem()
    budget = latency(space.largest()) * 0.7
    hvs = {}
    for strategy in ("nsga2", "random"):
        hv = []
        for seed in range(5):
            hist = run_strategy(strategy, space, evaluate, latency, lambda c: latency(c) <= budget, budget=96,
                                seed=seed, population=12, batch=4)
            assert all(c.latency_ms <= budget for c in hist)
            hv.append(hypervolume(hist, budget))
        hvs[strategy] = float(np.median(hv))
    assert hvs["nsga2"] > hvs["random"]


def test_pareto_front_and_hypervolume():
    pts = [Candidate({"i": i}, a, lt, i) for i, (a, lt) in enumerate([(90, 1.0), (80, 2.0), (95, 2.0), (99, 4.0)])]
    front = pareto_front(pts)
    assert [(c.accuracy, c.latency_ms) for c in front] == [(90, 1.0), (95, 2.0), (99, 4.0)]
    # area: [1,2) x 90 + [2,4) x 95 = 90 + 190 = 280 of 4 x 100
    assert hypervolume(pts, 4.0) == pytest.approx(280 / 400)
    assert hypervolume(pts[:1], 4.0) == pytest.approx(3 * 90 / 400)


# --------------------------------------------------------------------------------------------------
# executors


def _ray_setup():
    from compress.data import Dataset
    from compress.search.supernet import eval_payload

    space = load_space("inverted_residual", TINY_MB)
    torch.manual_seed(0)
    sup = space.supernet().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 1, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64) + 2 * (x[:, 0, 0, 0] > 0)
    ds = Dataset.from_arrays(x, y)
    return space, eval_payload(space, sup, ds, split="eval", bn_batches=1, bn_batch_size=32)


@pytest.mark.integration
def test_ray_executor_gives_the_in_process_front():
    pytest.importorskip("ray")
    from compress.search.executor import InProcess, RayExecutor
    from compress.search.supernet import candidate_accuracy

    space, payload = _ray_setup()
    latency = _toy_problem()[2]
    fronts = []
    for ex in (InProcess(), RayExecutor(workers=2)):
        try:
            hist = run_strategy("nsga2", space, lambda cs: ex.map(candidate_accuracy, payload, cs), latency,
                                lambda c: True, budget=12, seed=0, population=4, batch=4)
        finally:
            ex.close()
        fronts.append([(space.key(c.config), c.accuracy, c.latency_ms) for c in pareto_front(hist)])
        assert len({c.accuracy for c in hist}) > 1  # accuracies really come from the subnets
    assert fronts[0] == fronts[1]


def test_calibration_subnets_span_the_space_and_the_fit_is_guarded():
    space = load_space("inverted_residual", TINY_MB)
    nets = lat.calibration_configs(space, 8)
    assert nets[0] == space.smallest() and nets[-1] == space.largest()
    assert len({space.key(c) for c in nets}) == 8
    params = [sum(p.numel() for p in space.extract(space.supernet(), c).parameters()) for c in nets]
    assert params[0] == min(params) and params[-1] == max(params)
    # an exact affine relation is recovered; a wild one (an outlier) falls back to a pure scale
    assert lat.fit_affine([1.0, 2.0, 4.0], [0.7, 1.2, 2.2]) == pytest.approx((0.5, 0.2))
    a, b = lat.fit_affine([1.0, 1.01, 1.02, 3.0], [1.0, 1.0, 1.0, 0.2])
    assert b == 0.0 and a == pytest.approx(float(np.median([1.0, 1 / 1.01, 1 / 1.02, 0.2 / 3.0])))
    # the default correction is one scale: one wild network does not move it
    assert lat.fit_correction([1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 2.2, 3.3, 4.4, 50.0]) == pytest.approx((1.1, 0.0, 0.0))
    # a held-out set spread like the calibration nets, disjoint from them
    held = lat.spread_configs(space, 12, seed=1, exclude=nets)
    assert len({space.key(c) for c in held}) == 12 and not {space.key(c) for c in held} & {space.key(c) for c in nets}
    sizes = [sum(p.numel() for p in space.extract(space.supernet(), c).parameters()) for c in held]
    assert np.mean(sizes[:4]) < np.mean(sizes[-4:])


def test_accuracy_predictor_ranks_a_learnable_target_and_not_noise():
    from compress.search.predictor import accuracy_predictor

    space = load_space("inverted_residual", TINY_MB)
    rng = np.random.default_rng(0)
    configs = list({space.key(c): c for c in (space.sample(rng) for _ in range(120))}.values())
    enc = np.asarray([space.encode(c) for c in configs])
    acc = 80 + 10 * enc[:, 0] + 5 * enc[:, 1] * enc[:, 2] + rng.normal(0, 0.3, len(configs))  # res, width, d0
    good = accuracy_predictor(space, configs, list(acc), seed=0)
    assert good["n"] == len(configs) and good["kendall_tau"] > 0.6
    noise = accuracy_predictor(space, configs, list(rng.permutation(acc)), seed=0)
    assert abs(noise["kendall_tau"]) < 0.3
    assert accuracy_predictor(space, configs[:5], list(acc[:5]))["kendall_tau"] is None


def test_session_drift_is_recovered_from_repeated_sessions():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 3, 10)
    pos = np.stack([rng.permutation(200)[:10], rng.permutation(200)[:10]]).astype(float)
    ms = true * np.exp(-2e-4 * pos) * np.exp(rng.normal(0, 0.002, pos.shape))
    assert lat.session_drift(ms, pos) == pytest.approx(-2e-4, rel=0.15)
    assert lat.session_drift(ms[:1], pos[:1]) == 0.0  # one session per net: nothing to compare


def test_leave_one_out_error_of_the_correction():
    exact = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert lat.loo_mape(exact, [0.8 * x + 0.1 for x in exact], "affine") == pytest.approx(0.0, abs=1e-9)
    bent = [0.8 * x + 0.1 + (0.3 if i == 2 else 0.0) for i, x in enumerate(exact)]
    assert lat.loo_mape(exact, bent, "affine") > 1.0  # the odd network is predicted by the others' fit
    assert lat.loo_mape(exact[:2], bent[:2], "affine") is None


def test_weights_correction_is_fitted_guarded_and_chosen_leave_one_out():
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5]
    weights = [0.5, 3.0, 1.0, 4.0, 2.0, 0.2]  # not in lock-step with the sum (contrast nets)
    streamed = [0.9 * s + 0.05 * w + 0.1 for s, w in zip(base, weights)]
    assert lat.fit_weights(base, weights, streamed) == pytest.approx((0.9, 0.1, 0.05))
    # a negative weight cost is not physical: the plain affine instead (w = 0)
    odd = [0.9 * s - 0.05 * w + 0.1 for s, w in zip(base, weights)]
    assert lat.fit_weights(base, weights, odd)[2] == 0.0
    assert lat.fit_correction(base, streamed, "weights", weights) == pytest.approx((0.9, 0.1, 0.05))
    assert lat.fit_correction(base, streamed, "affine", weights)[2] == 0.0
    assert lat.loo_mape(base, streamed, "weights", weights) == pytest.approx(0.0, abs=1e-9)
    assert lat.loo_mape(base, streamed, "affine") > 0.5


class _Stats:  # what build reads from a measurement: p50 and (no) rounds
    def __init__(self, ms):
        self.p50_ms, self.rounds, self.samples_ms = ms, [], []


def test_build_takes_the_median_over_sessions_and_chooses_the_weights_term(tmp_path):
    """A fake measurement (no runtime): a block costs 0.05 ms + 0.01 ms per thousand weights, a network its
    blocks' sum plus 0.02 ms per thousand weights (streamed again); one session of every block and network
    is 30% slow. Entries and truths are medians over sessions (the slow one ignored); 'auto' picks the weights
    term leave-one-out and the model then predicts held-out networks exactly."""
    space = load_space("inverted_residual", {**TINY_MB, "resolutions": [8]})
    blocks = {b.key: b for b in lat.all_blocks(space)}
    counts = {k: lat.block_counts(b)["params"] for k, b in blocks.items()}
    n_params = {}  # artifact folder -> thousands of weights

    def net(c, folder, i):
        n_params[str(folder)] = (sum(counts[b.key] for b in space.blocks(c)) / 1e3, len(space.blocks(c)))
        return lat.recipe_artifact(space.recipe(c), (1, 1, 8, 8), folder, seed=i)

    calls = {}

    def measure(arts):
        out = []
        for a in arts:
            k = str(a.dir)
            calls[k] = calls.get(k, 0) + 1
            slow = 1.3 if calls[k] == 2 else 1.0
            if k in n_params:
                w, n = n_params[k]
                out.append(_Stats(slow * (0.03 * w + 0.05 * n)))
            else:
                kw = a.recipe["kwargs"]
                parts = kw["parts"] if "parts" in kw else [a.recipe]
                from compress.artifact import import_callable

                w = sum(sum(p.numel() for p in import_callable(r["callable"])(**r["kwargs"]).parameters())
                        for r in parts)
                out.append(_Stats(slow * (0.01 * w / 1e3 + 0.05 * len(parts))))
        return out

    rng = np.random.default_rng(0)
    calibration = lat.calibration_configs(space, 8)
    holdout = [space.sample(rng) for _ in range(10)]
    development = [space.sample(rng) for _ in range(4)]
    model, rows = lat.build(space, measure, tmp_path / "w", input_shape=(1, 1, 8, 8), calibration=calibration,
                            holdout=holdout, development=development, repeats=3, block_repeats=3, correction="auto",
                            network=net, shuffle=None)
    assert [r["config"] for r in model.development] == development and len(rows) == len(holdout)
    assert model.selection["by"] == "development" and model.selection["development_networks"] == 4
    assert all(len(e["p50_reps"]) == 3 for e in model.table.values())
    e = next(iter(model.table.values()))
    assert e["p50_ms"] == pytest.approx(sorted(e["p50_reps"])[1]) and max(e["p50_reps"]) == pytest.approx(1.3 * e["p50_ms"])
    assert all(r["measured_ms"] == pytest.approx(min(r["measured_reps"])) for r in rows)  # the slow session ignored
    assert model.correction == "weights" and model.w > 0
    assert model.selection["loo_mape_pct"]["p50/weights"] < model.selection["loo_mape_pct"]["p50/affine"]
    assert model.selection["development_mape_pct"]["p50/weights"] < model.selection["development_mape_pct"]["p50/affine"]
    assert lat.validate([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])["mape_pct"] < 0.5
    # the stage's refit in a later session keeps the correction kind
    again = model.refit(space, calibration, [2 * r["measured_ms"] for r in model.calibration])
    assert again.correction == "weights" and again.predict(space, holdout[0]) == pytest.approx(
        2 * model.predict(space, holdout[0]), rel=1e-6)


def test_calibration_subnets_include_contrast_nets():
    space = load_space("inverted_residual", TINY_MB)
    nets = lat.calibration_configs(space, 8)
    params = [sum(p.numel() for p in space.extract(space.supernet(), c).parameters()) for c in nets]
    # weights do not grow in lock-step along the calibration set: some inner net is lighter than an earlier one
    assert any(params[i] < max(params[:i]) for i in range(2, len(params) - 1))


def test_development_nets_choose_the_block_statistic_the_calibration_nets_cannot_tell():
    """Cold and p50 entries agree on every block of the calibration nets, so leave-one-out on them cannot tell
    the statistics apart (the tie goes to p50); the development nets, timed as their cold sum, can. Nothing is
    fitted on them: the correction is the calibration nets' fit."""
    space = load_space("inverted_residual", {**TINY_MB, "resolutions": [8]})
    calibration = lat.calibration_configs(space, 6)
    used = {b.key for c in calibration for b in space.blocks(c)}
    rng = np.random.default_rng(0)
    table = {}
    for i, b in enumerate(lat.all_blocks(space)):
        p50 = 0.1 + 0.01 * i
        table[b.key] = {"ms": p50, "p50_ms": p50, "cold_ms": p50 if b.key in used else 1.5 * p50,
                        "params": 1000 * (i + 1), "macs": 0}
    model = lat.LatencyModel(kind="table", table=table)
    dev = [c for c in (space.sample(rng) for _ in range(200)) if {b.key for b in space.blocks(c)} - used][:8]
    assert len(dev) == 8
    cal_ms = [0.9 * model.restat("cold").base(space, c) + 0.05 for c in calibration]
    dev_ms = [0.9 * model.restat("cold").base(space, c) + 0.05 for c in dev]
    loo = lat.choose(model, space, calibration, cal_ms)
    assert loo.block_stat == "p50" and loo.selection["by"] == "loo"
    chosen = lat.choose(model, space, calibration, cal_ms, development=(dev, dev_ms))
    assert chosen.block_stat == "cold" and chosen.selection["by"] == "development"
    assert chosen.selection["development_mape_pct"]["cold/affine"] < 1e-6 < chosen.selection["development_mape_pct"]["p50/affine"]
    assert (chosen.a, chosen.b) == pytest.approx((0.9, 0.05))
    # the development nets' truth does not enter the fit: shifting it moves nothing but the choice's scores
    again = lat.choose(model, space, calibration, cal_ms, development=(dev, [1.01 * m for m in dev_ms]))
    assert again.block_stat == "cold" and (again.a, again.b, again.w) == pytest.approx((chosen.a, chosen.b, chosen.w))


def test_search_stage_times_development_nets_to_choose_when_asked(tmp_path):
    """search.nas's latency.development_networks: that many random subnets are timed with the table and make the
    'auto' choice (recorded in the facts); 0 keeps leave-one-out; the two are cached apart."""
    from types import SimpleNamespace

    from compress.artifact import import_callable
    from compress.cache import Cache
    from compress.config import TargetConfig
    from compress.export import ExportConfig
    from compress.stages.search_nas import SearchNAS

    space = load_space("inverted_residual", {**TINY_MB, "resolutions": [8]})
    timed = []

    def latency(arts, target, policy, label=""):
        timed.append(len(arts))
        out = [_Stats(1.0)]  # the baseline
        for a in arts[1:]:
            kw = a.recipe["kwargs"]
            parts = kw["parts"] if "parts" in kw else [a.recipe]
            w = sum(sum(p.numel() for p in import_callable(r["callable"])(**r["kwargs"]).parameters()) for r in parts)
            out.append(_Stats(0.01 * w / 1e3 + 0.05 * len(parts)))
        return out

    ctx = SimpleNamespace(export=ExportConfig(), log=lambda m: None,
                          measure=SimpleNamespace(latency=latency, cache=Cache(tmp_path / "cache")))
    base = SimpleNamespace(hash="baseline", input_shape=(1, 1, 8, 8))
    facts = {}
    for n in (0, 5):
        stage = SearchNAS(SearchNAS.Config(latency={"calibration_networks": 6, "development_networks": n}))
        _, _, facts[n] = stage._latency_model(space, base, ctx, TargetConfig(name="t"), tmp_path / f"s{n}")
    assert facts[0]["selection"]["by"] == "loo" and "development_mape_pct" not in facts[0]["selection"]
    assert facts[5]["selection"]["by"] == "development" and facts[5]["selection"]["development_networks"] == 5
    assert timed[1] == timed[0] + 5 * stage.config.latency.repeats  # in the table's one session, like the others
    with pytest.raises(ValueError):
        SearchNAS.Config(latency={"development_networks": 41})
