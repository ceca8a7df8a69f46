"""Fidelity metrics (compress/evaluation.py): values checked against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from compress.evaluation import FIDELITY, fidelity, score


def test_identical_outputs_are_perfectly_faithful():
    ref = np.random.default_rng(0).standard_normal((50, 10)).astype(np.float32)
    f = fidelity(ref, ref)
    assert f == {"agreement": 100.0, "agreement_top5": 100.0, "cosine": pytest.approx(1.0),
                 "cosine_p1": pytest.approx(1.0), "relative_error": pytest.approx(0.0, abs=1e-6)}
    assert set(f) == set(FIDELITY)


def test_hand_computed_case():
    ref = np.array([[3.0, 2, 1, 0, 0, 0], [0, 1, 0, 0, 0, 5]])
    out = np.array([[2.0, 3, 1, 0, 0, 0],  # top-1 flips to class 1; class 0 still in the top 5
                    [0, 1, 0, 0, 0, 5]])   # identical
    f = fidelity(out, ref)
    assert f["agreement"] == 50.0 and f["agreement_top5"] == 100.0
    cos0 = (6 + 6 + 1) / 14  # both rows have norm sqrt(14)
    assert f["cosine"] == pytest.approx((cos0 + 1) / 2, abs=1e-6)
    assert f["cosine_p1"] == pytest.approx(cos0, abs=1e-6)  # worst 1% of 2 samples: the worst one
    assert f["relative_error"] == pytest.approx((np.sqrt(2) / np.sqrt(14)) / 2, abs=1e-6)


def test_worst_percent_sees_bad_samples_the_mean_hides():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((300, 20))
    out = ref.copy()
    out[[7, 100, 200]] = -ref[[7, 100, 200]]  # 1% of the samples completely wrong
    f = fidelity(out, ref)
    assert f["cosine"] > 0.97 and f["cosine_p1"] < 0.0


def test_top5_undefined_for_few_outputs_and_score_without_reference():
    ref = np.eye(4)
    assert fidelity(ref, ref)["agreement_top5"] is None
    s = score(ref, np.array([0, 1, 2, 0]), None)
    assert s["accuracy"] == 75.0 and all(s[k] is None for k in FIDELITY)
    with pytest.raises(ValueError):
        fidelity(np.zeros((3, 4)), np.zeros((3, 5)))
