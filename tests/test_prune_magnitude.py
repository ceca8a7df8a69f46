"""prune.magnitude: the cubic schedule, N:M masks, the stage's sparsity and permanence."""
from __future__ import annotations

import pytest
import torch

from compress.artifact import build_module
from compress.stages.prune_magnitude import (
    PruneMagnitude, PruneMagnitudeConfig, cubic_schedule, n_m_holds, n_m_mask,
)
from test_prune_structured import _artifact, _ctx


def test_cubic_schedule():
    s = cubic_schedule(0.0, 0.8, 4)
    assert s[-1] == pytest.approx(0.8)
    assert s == pytest.approx([0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3), 0.8 * (1 - 0.25 ** 3), 0.8])
    assert all(b > a for a, b in zip(s, s[1:]))  # increasing
    assert all(b - a < a - p for p, a, b in zip([0.0] + s, s, s[1:]))  # prunes fast first, then slows down
    assert cubic_schedule(0.5, 0.9, 1) == pytest.approx([0.9])


@pytest.mark.parametrize("shape", [(8, 16), (4, 8, 3, 3)])
def test_n_m_mask(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    mask = n_m_mask(w, 2, 4)
    assert mask.shape == w.shape and float(mask.mean()) == 0.5
    assert n_m_holds(w * mask, 2, 4) and not n_m_holds(w, 2, 4)
    # the kept ones are the 2 largest of each 4 consecutive weights along the reduction axis
    g = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4).abs()
    km = (mask.permute(0, 2, 3, 1) if w.dim() == 4 else mask).reshape(-1, 4)
    assert torch.equal((g * km).sum(1), g.topk(2, dim=1).values.sum(1))


@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_stage_reaches_sparsity_and_makes_it_permanent(tmp_path, ranking):
    art = _artifact(tmp_path)
    cfg = PruneMagnitudeConfig(sparsity=0.8, steps=2, ranking=ranking,
                               finetune={"steps": 3, "batch_size": 16, "threads": 1})
    out = PruneMagnitude(cfg).run(art, _ctx(tmp_path))
    assert out.facts["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert [s["sparsity"] for s in out.facts["steps"]][0] == pytest.approx(cubic_schedule(0, 0.8, 2)[0], abs=0.01)
    model = build_module(out)  # plain weights, no masks or hooks left
    assert not any("mask" in k or "orig" in k for k in model.state_dict())
    convs = [model.features[0].weight, model.features[3].weight]
    zeros = sum(int((w == 0).sum()) for w in convs)
    assert zeros / sum(w.numel() for w in convs) == pytest.approx(0.8, abs=0.01)
    assert float((model.fc.weight == 0).float().mean()) == 0.0  # the head is kept
    if ranking == "layer":
        assert all(v == pytest.approx(0.8, abs=0.01) for v in out.facts["layer_sparsity"].values())


def test_stage_2_4_is_verified(tmp_path):
    art = _artifact(tmp_path)
    out = PruneMagnitude(PruneMagnitudeConfig(n_m="2:4", finetune={"steps": 3, "batch_size": 16, "threads": 1})
                         ).run(art, _ctx(tmp_path))
    assert out.facts["n_m_skipped"] == ["features.0"]  # 1 input channel: no groups of 4
    assert out.facts["n_m_verified"] == ["features.3"]
    assert n_m_holds(build_module(out).features[3].weight, 2, 4)


def test_config_rejects_bad_n_m_and_schedule():
    with pytest.raises(ValueError, match="N:M"):
        PruneMagnitudeConfig(n_m="4:2")
    with pytest.raises(ValueError, match="initial_sparsity"):
        PruneMagnitudeConfig(sparsity=0.5, initial_sparsity=0.6)
