"""The optional accuracy predictor: a small MLP (scikit-learn ``MLPRegressor``) from a subnet's encoding
(:meth:`SearchSpace.encode`) to its scored accuracy, and how well it ranks subnets it was not fitted on.

Its quality is measured, not assumed: out-of-fold predictions (``cross_val_predict``, k folds) against
the scores the search measured give Kendall tau and Spearman rho. The search does not steer by it; the
stage reports it, so a user can tell whether a predictor-driven search would be worth it for this space.
"""
from __future__ import annotations

from typing import Any

from compress.search.space import Config, SearchSpace


def make_mlp(seed: int):
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn.compose import TransformedTargetRegressor

    mlp = MLPRegressor(hidden_layer_sizes=(32, 32), alpha=1e-3, max_iter=3000, random_state=seed)
    return TransformedTargetRegressor(regressor=make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())


def accuracy_predictor(space: SearchSpace, configs: list[Config], accuracy: list[float], *, folds: int = 5,
                       seed: int = 0) -> dict[str, Any]:
    """Fit the MLP on every (config, accuracy) and report its out-of-fold rank correlation:
    ``{"model": "mlp(32,32)", "n", "folds", "kendall_tau", "spearman_rho"}`` (``None`` values below 10 subnets)."""
    import numpy as np
    from scipy.stats import kendalltau, spearmanr
    from sklearn.model_selection import KFold, cross_val_predict

    out: dict[str, Any] = {"model": "mlp(32,32) on the encoding", "n": len(configs), "folds": folds,
                           "kendall_tau": None, "spearman_rho": None}
    if len(configs) < 10:
        return out
    x = np.asarray([space.encode(c) for c in configs], float)
    y = np.asarray(accuracy, float)
    pred = cross_val_predict(make_mlp(seed), x, y, cv=KFold(folds, shuffle=True, random_state=seed))
    out["kendall_tau"] = round(float(kendalltau(pred, y).statistic), 4)
    out["spearman_rho"] = round(float(spearmanr(pred, y).statistic), 4)
    return out
