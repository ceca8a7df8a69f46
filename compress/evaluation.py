"""Accuracy of the *exported artifact running in the target runtime*, plus label-free fidelity.

- ``accuracy``: top-1 in percent, where the data has labels.
- ``agreement``: percent of samples whose top-1 matches the baseline's (same runtime, same data).
- ``cosine``: mean cosine similarity of output vectors vs the baseline's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.data import Dataset
    from compress.runtimes.base import Session


def run_outputs(session: "Session", dataset: "Dataset", split: str, batch_size: int,
                max_samples: int | None = None, fixed_batch: int | None = None) -> "np.ndarray":
    """Outputs of ``session`` over a split, batched (or at the model's fixed batch size)."""
    import numpy as np

    x, _ = dataset.split(split)
    if max_samples is not None:
        x = x[:max_samples]
    bs = fixed_batch or batch_size
    outs = []
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        if fixed_batch and len(xb) < fixed_batch:  # pad the tail for fixed-batch models
            pad = np.repeat(xb[-1:], fixed_batch - len(xb), axis=0)
            outs.append(session.infer(np.concatenate([xb, pad]))[: len(xb)])
        else:
            outs.append(session.infer(xb))
    return np.concatenate(outs).reshape(len(x), -1)


def score(outputs: "np.ndarray", labels: "np.ndarray | None", reference: "np.ndarray | None") -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"n": int(len(outputs)), "accuracy": None, "agreement": None, "cosine": None}
    pred = outputs.argmax(1)
    if labels is not None:
        out["accuracy"] = round(100.0 * float((pred == labels[: len(pred)]).mean()), 4)
    if reference is not None:
        out["agreement"] = round(100.0 * float((pred == reference.argmax(1)).mean()), 4)
        num = (outputs * reference).sum(1)
        den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
        out["cosine"] = round(float((num / den).mean()), 6)
    return out
