"""Accuracy of the *exported artifact running in the target runtime*, plus label-free fidelity.

Quality is measured on the evaluation split; fidelity compares an artifact's outputs with a
reference's outputs on the same samples, in the same runtime (the baseline for the report's columns
and gates; a stage's own input for the regression warning):

- ``accuracy``: top-1 in percent, where the data has labels.
- ``agreement``: percent of samples whose top-1 class matches the reference's top-1.
- ``agreement_top5``: percent of samples whose reference top-1 class is among the artifact's top 5
  (``None`` when the model has 5 outputs or fewer: it would be 100% by construction).
- ``cosine``: mean cosine similarity of the output vectors vs the reference's.
- ``cosine_p1``: the worst 1% — the mean cosine of the worst 1% of samples (at least one sample), so
  one bad sample in a hundred shows here long before it moves the mean.
- ``relative_error``: mean over samples of ``||out - ref|| / ||ref||`` (L2 over the output vector).

:data:`FIDELITY` names these metrics, their direction and their description once; the report, the
gates and the regression checks read it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.data import Dataset
    from compress.runtimes.base import Session

#: fidelity metric -> (higher is better, description); all are computed vs a reference's outputs
FIDELITY: dict[str, tuple[bool, str]] = {
    "agreement": (True, "Top-1 agreement with the reference, % of samples."),
    "agreement_top5": (True, "% of samples whose reference top-1 is in the artifact's top 5 (None for <= 5 outputs)."),
    "cosine": (True, "Mean cosine similarity of the output vectors vs the reference."),
    "cosine_p1": (True, "Worst 1%: mean output cosine of the worst 1% of samples (at least one) vs the reference."),
    "relative_error": (False, "Mean relative L2 error of the outputs vs the reference: ||out - ref|| / ||ref||."),
}


def run_outputs(session: "Session", dataset: "Dataset", split: str, batch_size: int,
                max_samples: int | None = None, fixed_batch: int | None = None) -> "np.ndarray":
    """Outputs of ``session`` over a split, batched (or at the model's fixed batch size); every named
    input of the data is fed."""
    import numpy as np

    from compress.data.dataset import n_samples, take

    x, _ = dataset.split_feeds(split)
    n = n_samples(x)
    if max_samples is not None:
        n = min(n, max_samples)
    bs = fixed_batch or batch_size
    outs = []
    for i in range(0, n, bs):
        idx = np.arange(i, min(i + bs, n))
        if fixed_batch and len(idx) < fixed_batch:  # pad the tail for fixed-batch models
            idx_p = np.concatenate([idx, np.full(fixed_batch - len(idx), idx[-1])])
            outs.append(session.infer(take(x, idx_p))[: len(idx)])
        else:
            outs.append(session.infer(take(x, idx)))
    return np.concatenate(outs).reshape(n, -1)


def fidelity(outputs: "np.ndarray", reference: "np.ndarray") -> dict[str, float | None]:
    """The :data:`FIDELITY` metrics of ``outputs`` vs ``reference`` (both ``(N, K)``, same samples)."""
    import numpy as np

    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if out.shape != ref.shape:
        raise ValueError(f"outputs {out.shape} and reference {ref.shape} differ in shape")
    top1 = ref.argmax(1)
    res: dict[str, float | None] = {"agreement": round(100.0 * float((out.argmax(1) == top1).mean()), 4)}
    if out.shape[1] > 5:
        top5 = np.argpartition(-out, 5, axis=1)[:, :5]
        res["agreement_top5"] = round(100.0 * float((top5 == top1[:, None]).any(1).mean()), 4)
    else:
        res["agreement_top5"] = None
    on, rn = np.linalg.norm(out, axis=1), np.linalg.norm(ref, axis=1)
    cos = (out * ref).sum(1) / (on * rn + 1e-12)
    res["cosine"] = round(float(cos.mean()), 6)
    worst = max(1, int(np.ceil(0.01 * len(cos))))
    res["cosine_p1"] = round(float(np.sort(cos)[:worst].mean()), 6)
    res["relative_error"] = round(float((np.linalg.norm(out - ref, axis=1) / (rn + 1e-12)).mean()), 6)
    return res


#: what each evaluation task reports as its quality
TASKS: dict[str, str] = {
    "classification": "top-1 accuracy vs labels (top-5 with more than 5 classes); agreement with the baseline",
    "embedding": "cosine and relative L2 error of the output vectors vs the baseline (no accuracy)",
    "regression": "relative L2 error and cosine of the outputs vs the baseline (no accuracy)",
}


def score(outputs: "np.ndarray", labels: "np.ndarray | None", reference: "np.ndarray | None",
          task: str = "classification", metric: Any = None) -> dict[str, Any]:
    """``n``, ``accuracy`` / ``accuracy_top5`` (classification with labels), the :data:`FIDELITY` metrics vs
    ``reference`` (``None`` without one) and ``metric``: a user callable ``fn(outputs, labels) -> float``."""
    import numpy as np

    out: dict[str, Any] = {"n": int(len(outputs)), "accuracy": None, "accuracy_top5": None,
                           **{k: None for k in FIDELITY}}
    flat = outputs.reshape(len(outputs), -1)
    if labels is not None and task == "classification":
        y = labels[: len(flat)]
        out["accuracy"] = round(100.0 * float((flat.argmax(1) == y).mean()), 4)
        if flat.shape[1] > 5:
            top5 = np.argpartition(-flat, 5, axis=1)[:, :5]
            out["accuracy_top5"] = round(100.0 * float((top5 == y[:, None]).any(1).mean()), 4)
    if metric is not None:
        out["metric"] = float(metric(outputs, labels[: len(flat)] if labels is not None else None))
    if reference is not None:
        out.update(fidelity(outputs, reference))
    return out
