"""The one training loop: determinism under a seed, the eval curve, KD, max_minutes, config checks."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from compress.data import make_synthetic
from compress.training import (
    AugmentConfig,
    DistillConfig,
    TrainConfig,
    accuracy,
    augment,
    kd_loss,
    total_steps,
    train,
)
from compress.zoo import get


@pytest.fixture(scope="module")
def data():
    return make_synthetic(240, (1, 8, 8), num_classes=4, seed=0)


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get("tiny_cnn")(num_classes=4, in_channels=1, width=4)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=32, lr=1e-2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_other_seed_other_weights(data):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = tiny()
        train(model, data, cfg(seed=seed))
        runs[name] = weights(model)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_training_learns_and_leaves_caller_state_alone(data):
    model = tiny()
    before = accuracy(model, data)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hist = train(model, data, cfg(steps=40, threads=1 if threads != 1 else 2))
    assert torch.equal(torch.rand(3), expected), "train() must not consume or reseed the caller's RNG"
    assert torch.get_num_threads() == threads
    assert not model.training
    assert hist["steps"] == 40 and not hist["stopped_early"] and math.isfinite(hist["final_loss"])
    assert accuracy(model, data) > before + 15  # chance is 25%


def test_eval_curve_every_n_steps_and_in_progress(data):
    seen = []
    hist = train(tiny(), data, cfg(steps=5, eval_every=2), progress=lambda s, t, info: seen.append((s, t, info)))
    assert [c["step"] for c in hist["eval_curve"]] == [2, 4, 5]  # every 2 steps and at the end
    assert all(0 <= c["accuracy"] <= 100 and math.isfinite(c["loss"]) for c in hist["eval_curve"])
    assert hist["final_eval_accuracy"] == hist["eval_curve"][-1]["accuracy"]
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5] and all(t == 5 for _, t, _ in seen)
    assert "acc" not in seen[0][2] and seen[1][2]["acc"] == hist["eval_curve"][0]["accuracy"]
    assert seen[2][2]["acc"] == seen[1][2]["acc"]  # the last value stays on the bar between evaluations
    assert all("loss" in info for _, _, info in seen)


def test_eval_every_epoch(data):
    c = cfg(steps=None, epochs=2, eval_every="epoch")
    per_epoch = -(-len(data.splits["train"]) // c.batch_size)
    hist = train(tiny(), data, c)
    assert total_steps(c, len(data.splits["train"])) == 2 * per_epoch
    assert [p["step"] for p in hist["eval_curve"]] == [per_epoch, 2 * per_epoch]
    assert [p["epoch"] for p in hist["eval_curve"]] == [1.0, 2.0]
    assert "eval_curve" not in train(tiny(), data, cfg())


def test_eval_needs_labels():
    unlabeled = make_synthetic(64, (1, 8, 8), num_classes=None)
    with pytest.raises(ValueError, match="labels"):
        train(tiny(), unlabeled, cfg(eval_every=2, distill=DistillConfig(alpha=1.0)), teacher=tiny(1))


def test_max_minutes_with_a_fake_clock(data):
    now = [0.0]

    def clock() -> float:  # every call is 20 s later
        now[0] += 20.0
        return now[0]

    hist = train(tiny(), data, cfg(steps=100, max_minutes=1.0, eval_every=50), clock=clock)
    assert hist["stopped_early"] and hist["steps"] < 10 and hist["planned_steps"] == 100
    assert hist["eval_curve"][-1]["step"] == hist["steps"]  # evaluated where it stopped


def test_kd_only_trains_without_labels():
    unlabeled = make_synthetic(128, (1, 8, 8), num_classes=None)
    teacher, student = tiny(0), tiny(1)
    before = weights(student)
    with pytest.raises(ValueError, match="labels"):
        train(student, unlabeled, cfg())
    hist = train(student, unlabeled, cfg(steps=20, distill=DistillConfig(alpha=1.0, temperature=2.0)),
                 teacher=teacher)
    assert hist["kd"] and math.isfinite(hist["final_loss"])
    assert not all(torch.equal(before[k], v) for k, v in weights(student).items())
    x = torch.from_numpy(unlabeled.split("train")[0])
    with torch.no_grad():
        t, s0 = teacher(x), tiny(1).eval()(x)
        s1 = student(x)
    # the student moved towards the teacher
    assert kd_loss(s1, t, 2.0) < kd_loss(s0, t, 2.0)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(16, 10)
    for temperature in (1.0, 4.0):
        assert abs(float(kd_loss(logits, logits.clone(), temperature))) < 1e-6
    assert float(kd_loss(logits, torch.randn(16, 10), 4.0)) > 1e-3


def test_kd_from_an_identical_teacher_is_zero_and_changes_nothing(data):
    """alpha=1 and student == teacher (no BatchNorm, so train/eval modes agree): zero loss, zero update."""
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    teacher.load_state_dict(student.state_dict())
    before = weights(student)
    # SGD: Adam would normalise float rounding noise in the gradient up to a full-size step
    hist = train(student, data, cfg(steps=3, optimizer="sgd", distill=DistillConfig(alpha=1.0)), teacher=teacher)
    assert hist["kd"] and hist["final_loss"] == 0.0
    assert all(torch.allclose(before[k], v, atol=1e-7) for k, v in weights(student).items())


def test_config_is_strict():
    with pytest.raises(ValidationError):
        TrainConfig(epoch=3)
    with pytest.raises(ValidationError):
        TrainConfig(eval_every=0)
    with pytest.raises(ValidationError):
        TrainConfig(eval_every="step")
    with pytest.raises(ValidationError):
        TrainConfig(optimizer="adam", momentum=0.5)
    assert TrainConfig(eval_every="epoch").eval_every == "epoch"
    assert TrainConfig(eval_every=3).eval_every == 3


def test_label_free_kd_uses_no_labels_and_label_kd_does(data):
    """alpha 1.0 (label-free KD): shuffling the labels changes nothing, bit for bit; alpha 0.5 does."""
    import dataclasses

    import numpy as np

    wrong = dataclasses.replace(data, y=np.random.default_rng(1).permutation(data.y))  # same inputs and splits
    assert (data.split("train")[1] != wrong.split("train")[1]).any()
    for alpha, same in ((1.0, True), (0.5, False)):
        runs = []
        for d in (data, wrong):
            student = tiny(1)
            train(student, d, cfg(steps=5, distill=DistillConfig(alpha=alpha, temperature=2.0)), teacher=tiny(0))
            runs.append(weights(student))
        assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]) is same, alpha


def test_kd_and_plain_finetune_get_the_same_budget(data):
    """Equal budget: with and without KD the student takes the same steps on the same batches in the same order."""
    seen: dict[str, list[torch.Tensor]] = {"kd": [], "plain": []}
    for name, distill in (("kd", DistillConfig(alpha=0.9, temperature=4.0)), ("plain", None)):
        student = tiny(1)
        student.register_forward_pre_hook(lambda m, args, n=name: seen[n].append(args[0].clone()) if m.training else None)
        hist = train(student, data, cfg(steps=9, distill=distill), teacher=tiny(0))
        assert hist["steps"] == 9 and hist["kd"] is (distill is not None)
    assert len(seen["kd"]) == len(seen["plain"]) == 9
    assert all(torch.equal(a, b) for a, b in zip(seen["kd"], seen["plain"]))


def test_kd_over_several_epochs_runs_the_teacher_once_per_sample(data):
    """The teacher's outputs are computed once (not once per epoch) and give the weights an uncached run gives."""
    n = len(data.splits["train"])
    runs, seen = [], []
    for cache in (True, False):
        teacher = tiny(0)
        calls: list[int] = []
        teacher.register_forward_pre_hook(lambda m, args, c=calls: c.append(len(args[0])))
        student = tiny(1)
        hist = train(student, data, cfg(epochs=3, steps=None, distill=DistillConfig(alpha=0.5)), teacher=teacher,
                     cache_teacher=cache)
        assert hist["teacher_outputs_cached"] is cache
        runs.append(weights(student))
        seen.append(sum(calls))
    assert seen[0] == n and seen[1] >= 3 * n - 32
    assert all(torch.allclose(runs[0][k], runs[1][k], atol=1e-5) for k in runs[0])


def test_augment_is_seeded_the_same_for_both_arms_and_the_teacher_sees_the_augmented_batch(data):
    """With augment, KD and plain fine-tuning get the same augmented batches (not the raw ones), the teacher is run
    on exactly those batches every step (no per-sample cache), and the same seed gives the same weights."""
    aug = AugmentConfig(shift=2, mixup=0.4)
    seen: dict[str, list[torch.Tensor]] = {"kd": [], "plain": [], "teacher": [], "raw": []}
    runs = []
    for name, distill, aug_cfg in (("kd", DistillConfig(alpha=0.5), aug), ("plain", None, aug),
                                  ("raw", None, None)):
        student, teacher = tiny(1), tiny(0)
        student.register_forward_pre_hook(lambda m, args, n=name: seen[n].append(args[0].clone()) if m.training else None)
        teacher.register_forward_pre_hook(lambda m, args: seen["teacher"].append(args[0].clone()))
        hist = train(student, data, cfg(epochs=3, steps=None, distill=distill, augment=aug_cfg), teacher=teacher)
        runs.append(weights(student))
        assert hist["teacher_outputs_cached"] is False if distill else "teacher_outputs_cached" not in hist
    steps = hist["steps"]
    assert len(seen["kd"]) == len(seen["plain"]) == len(seen["teacher"]) == steps > 8
    assert all(torch.equal(a, b) for a, b in zip(seen["kd"], seen["plain"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["kd"], seen["teacher"]))
    assert not any(torch.equal(a, b) for a, b in zip(seen["plain"], seen["raw"]))
    again = tiny(1)
    train(again, data, cfg(epochs=3, steps=None, augment=aug))
    assert all(torch.equal(again.state_dict()[k], runs[1][k]) for k in runs[1])


def test_augment_shift_translates_and_mixup_blends():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    shifted, mix = augment([x], AugmentConfig(shift=2), g)
    assert mix is None and shifted.shape == x.shape and not torch.equal(shifted, x)
    # every output is a 6x6 window of the border-replicated input: its centre pixel is an input pixel nearby
    for i in range(2):
        padded = torch.nn.functional.pad(x[i:i + 1], (2, 2, 2, 2), mode="replicate")[0, 0]
        assert any(torch.equal(shifted[i, 0], padded[a:a + 6, b:b + 6]) for a in range(5) for b in range(5))
    mixed, (perm, lam) = augment([x], AugmentConfig(mixup=1.0), torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and torch.allclose(mixed, lam * x + (1 - lam) * x[perm])


def test_augment_config_and_input_checks(data):
    with pytest.raises(ValidationError):
        AugmentConfig(shift=2, crop=3)
    with pytest.raises(ValidationError):
        AugmentConfig()  # neither shift nor mixup: say so rather than silently do nothing
    with pytest.raises(ValueError, match="one float image input"):
        augment([torch.zeros(4, 8)], AugmentConfig(shift=1), torch.Generator())
