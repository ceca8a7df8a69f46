"""distill.kd: teacher by name, new-architecture students, resumable training; runner wiring."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compress.artifact import build_module
from compress.cli import main
from compress.stages.distill_kd import DistillKD, DistillKDConfig
from compress.training import FinetuneConfig, train
from test_prune_structured import _artifact, _ctx

FT = {"steps": 6, "batch_size": 16, "threads": 1}


def test_student_new_architecture_learns_from_teacher(tmp_path):
    art = _artifact(tmp_path, width=16)
    cfg = DistillKDConfig(student={"zoo": "tiny_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 4}},
                          finetune={**FT, "steps": 20, "lr": 0.01})
    out = DistillKD(cfg).run(art, _ctx(tmp_path, artifacts={"baseline": art}))
    assert out.recipe["kwargs"]["width"] == 4 and out.edits == ()
    assert out.facts["student_macs"] < out.facts["teacher_macs"] / 3
    assert build_module(out).features[0].out_channels == 4
    assert out.facts["training"]["kd"] and out.facts["training"]["steps"] == 20


def test_unknown_or_onnx_teacher_is_a_clear_error(tmp_path):
    from compress.errors import StageError

    art = _artifact(tmp_path)
    with pytest.raises(StageError, match="teacher 'big' is not an earlier stage"):
        DistillKD(DistillKDConfig(teacher="big", finetune=FT)).run(art, _ctx(tmp_path, artifacts={"baseline": art}))


def test_label_free_kd_needs_no_labels(tmp_path):
    from compress.data import Dataset

    art = _artifact(tmp_path)
    ctx = _ctx(tmp_path, artifacts={"baseline": art})
    ctx.dataset = Dataset.from_arrays(ctx.dataset.x, None)
    out = DistillKD(DistillKDConfig(finetune={**FT, "distill": {"alpha": 1.0}})).run(art, ctx)
    assert out.facts["training"]["steps"] == 6 and "accuracy_student" not in out.facts


@pytest.mark.parametrize("augment", [None, {"shift": 1, "mixup": 0.4}])  # the augmentation's draws resume too
def test_killed_training_resumes_from_checkpoint_to_the_same_weights(tmp_path, augment):
    art = _artifact(tmp_path)
    ds = _ctx(tmp_path).dataset
    cfg = FinetuneConfig(steps=9, batch_size=16, threads=1, distill=None, augment=augment)
    ref = build_module(art)
    train(ref, ds, cfg)

    class Killed(Exception):
        pass

    def die_at_7(step, total, info):
        if step == 7:
            raise Killed

    ckpt = tmp_path / "ck" / "train.pt"
    model = build_module(art)
    with pytest.raises(Killed):
        train(model, ds, cfg, checkpoint=ckpt, checkpoint_every=3, progress=die_at_7)
    assert ckpt.is_file()
    again = build_module(art)  # a new process: fresh weights, only the checkpoint survives
    hist = train(again, ds, cfg, checkpoint=ckpt, checkpoint_every=3)
    assert hist["resumed_at_step"] == 6 and hist["steps"] == 9
    assert not ckpt.exists()
    for a, b in zip(ref.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_killed_baseline_training_resumes_from_its_epoch_checkpoint(tmp_path):
    import contextlib

    from compress.baseline import build_baseline
    from compress.config import load_pipeline
    from compress.data import load_dataset
    from conftest import tiny_pipeline, write_yaml

    loaded = load_pipeline(write_yaml(tmp_path / "p.yaml", tiny_pipeline(tmp_path)))  # 30 steps, 8 per epoch
    ds = load_dataset(loaded.config.data, tmp_path)

    class Killed(BaseException):  # like a kill: not caught as a training failure
        pass

    class Bar:
        def __init__(self, die_at):
            self.step, self.die_at = 0, die_at

        def update(self, n, **info):
            self.step += n
            if self.step == self.die_at:
                raise Killed

    def progress(die_at):
        return lambda label, total: contextlib.nullcontext(Bar(die_at))

    ref = build_module(build_baseline(loaded, ds, tmp_path / "ref", progress(None), lambda m: None))
    ckpt = tmp_path / "ck" / "baseline.pt"
    with pytest.raises(Killed):
        build_baseline(loaded, ds, tmp_path / "a", progress(21), lambda m: None, checkpoint=ckpt)
    assert ckpt.is_file()
    art = build_baseline(loaded, ds, tmp_path / "b", progress(None), lambda m: None, checkpoint=ckpt)
    assert art.facts["training"]["resumed_at_step"] == 16 and art.facts["training"]["steps"] == 30
    assert not ckpt.exists()
    for a, b in zip(ref.state_dict().values(), build_module(art).state_dict().values()):
        assert torch.equal(a, b)


def test_pipeline_teacher_reference_is_checked_and_used(tiny_yaml, tmp_path):
    ft = {"steps": 4, "batch_size": 32, "threads": 1}
    bad = tiny_yaml(stages=[{"name": "kd", "type": "distill.kd", "config": {"teacher": "later", "finetune": ft}},
                            {"name": "later", "type": "transform.fold_bn"}])
    r = CliRunner().invoke(main, ["validate", str(bad)])
    assert r.exit_code == 2 and "refers to 'later', which is not an earlier stage" in r.output
    good = tiny_yaml(stages=[
        {"name": "prune", "type": "prune.structured", "config": {"pruning_ratio": 0.5, "finetune": None}},
        {"name": "kd", "type": "distill.kd", "config": {"teacher": "baseline", "finetune": ft}}])
    r = CliRunner().invoke(main, ["run", str(good)], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    kd = rep["stages"][1]
    assert kd["facts"]["teacher"] == "baseline"
    assert kd["facts"]["teacher_macs"] > kd["facts"]["student_macs"]
    assert not (tmp_path / "cache" / "checkpoints").exists() or not any((tmp_path / "cache" / "checkpoints").iterdir())
