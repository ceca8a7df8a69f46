"""``transform.fold_bn``: fold BatchNorm into the preceding Conv / Linear.

Maps to ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` applied on a
``torch.fx`` trace, so only BatchNorms whose *input is exactly* a Conv/Linear output (and that output
has no other user) are folded. Exact up to float32 rounding. Do this before INT8 quantization:
QDQ around an unfolded BatchNorm runs several times slower in ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from compress.stages.base import TORCH_FLOAT, Stage, StageConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.artifact import Artifact
    from compress.context import StageContext


class FoldBNConfig(StageConfig):
    require_all: bool = Field(False, description="Fail if any BatchNorm cannot be folded.")


def fold(model: "torch.nn.Module") -> tuple["torch.nn.Module", dict[str, Any]]:
    """Return a ``GraphModule`` with every foldable BatchNorm folded, plus counts for the report."""
    import torch
    import torch.fx as fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    from compress.errors import StageError

    model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        raise StageError(f"transform.fold_bn: the model cannot be traced by torch.fx ({str(e).splitlines()[0]})",
                         hint="remove the stage or make forward() free of data-dependent control flow") from e
    modules = dict(gm.named_modules())
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    bn_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    folded, left = [], []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), bn_types):
            continue
        prev = node.args[0]
        parent = modules.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        bn = modules[node.target]
        if parent is None or len(prev.users) != 1 or not bn.track_running_stats:
            left.append(node.target)
            continue
        if isinstance(parent, convs):
            fused = fuse_conv_bn_eval(parent, bn)
        elif isinstance(parent, torch.nn.Linear):
            fused = fuse_linear_bn_eval(parent, bn)
        else:
            left.append(node.target)
            continue
        _set_module(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        _set_module(gm, node.target, None)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, {"folded": len(folded), "not_folded": left}


def _set_module(root: "torch.nn.Module", qualname: str, module) -> None:
    parent_name, _, name = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if module is None:
        delattr(parent, name)
    else:
        setattr(parent, name, module)


def replay(model: "torch.nn.Module", artifact_dir: Path) -> "torch.nn.Module":
    """Re-apply the folding structure to a freshly built model (weights are loaded afterwards)."""
    gm, _ = fold(model)
    return gm


class FoldBatchNorm(Stage):
    """Fold BatchNorm layers into the preceding Conv/Linear (exact; do it before INT8)."""

    type: ClassVar[str] = "transform.fold_bn"
    Config = FoldBNConfig
    accepts = (TORCH_FLOAT,)
    trains = False
    summary = "Fold BatchNorm into the preceding Conv/Linear (torch.nn.utils.fusion)."

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        from compress.artifact import save_torch
        from compress.errors import StageError

        model = ctx.load_torch(artifact)
        gm, counts = fold(model)
        if self.config.require_all and counts["not_folded"]:
            raise StageError(f"transform.fold_bn: {len(counts['not_folded'])} BatchNorm layer(s) could not be "
                             f"folded: {', '.join(counts['not_folded'][:5])}", hint="set require_all: false")
        ctx.log(f"folded {counts['folded']} BatchNorm layer(s)"
                + (f", {len(counts['not_folded'])} left as they are" if counts["not_folded"] else ""))
        edits = artifact.edits + ({"replay": "compress.stages.fold_bn:replay", "params": {}},)
        return save_torch(gm, ctx.work_dir, like=artifact, producer=ctx.stage_name, edits=edits, facts=counts)

