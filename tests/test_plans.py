"""Augmentation plans and cached teacher outputs: replay, equality with a fresh teacher, cache keys."""
from __future__ import annotations

import warnings

import pytest
import torch

from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.plans import AugmentationPlan, teacher_outputs
from kd_utils.train_eval import fit
from kd_utils.train_kd import HintonKD


def _teacher(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125).eval()


def _batches(loader):
    return [tuple(t.clone() for t in b) for b in loader]


def test_plan_replays_bit_identical_batches_whatever_the_model_seed(toy_cifar):
    plan = AugmentationPlan(augment="crop_flip", batch_size=50, seed=3, epochs=2)
    torch.manual_seed(0)
    a = plan.loader(toy_cifar)
    first = [_batches(a), _batches(a)]
    torch.manual_seed(123)  # a different model seed changes the global RNG, not the plan
    b = plan.loader(toy_cifar)
    second = [_batches(b), _batches(b)]
    for ea, eb in zip(first, second):
        for ba, bb in zip(ea, eb):
            for ta, tb in zip(ba, bb):
                assert torch.equal(ta, tb)
    assert not torch.equal(first[0][0][0], first[1][0][0])  # epochs differ
    other = _batches(AugmentationPlan("crop_flip", 50, 4, 1).loader(toy_cifar))
    assert not torch.equal(other[0][0], first[0][0][0])  # another plan seed sees other data


def test_training_config_plan_seed_decouples_data_from_model_seed():
    assert TrainConfig(seed=5).plan_seed == 5
    assert TrainConfig(seed=5, data_seed=0).plan_seed == 0
    with pytest.raises(ValueError, match="data_seed"):
        TrainConfig(data_seed=-1)


def test_cached_outputs_equal_a_fresh_teacher_on_the_same_augmented_batch(toy_cifar, tmp_path):
    teacher = _teacher()
    plan = AugmentationPlan(augment="crop_flip", batch_size=40, seed=1, epochs=3)
    outs = teacher_outputs(teacher, toy_cifar, plan, cache_dir=tmp_path, device="cpu", precision="fp32",
                           embed_layer="stage5", progress=False)
    assert outs.built and outs.logits.shape == (3, len(toy_cifar.y_train), 10)
    assert outs.logits.dtype == torch.float16 and outs.embedding.shape[-1] == teacher.feature_channels[-1]
    loader = toy_cifar.loader("train", batch_size=40, shuffle=True, augment="crop_flip", seed=1,
                              epoch_extras=(outs.logits, outs.embedding))
    with torch.no_grad():
        for _ in range(3):
            for x, _y, logits, emb in loader:
                fresh = teacher(x)
                torch.testing.assert_close(logits.float(), fresh, rtol=2e-3, atol=2e-3)  # fp16 storage
                pooled = teacher.stage5(teacher.pool(teacher.stage4(teacher.pool(teacher.stage3(teacher.pool(
                    teacher.stage2(teacher.pool(teacher.stage1(x))))))))).mean((2, 3))
                torch.testing.assert_close(emb.float(), pooled, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="cover 3 epoch"):
        for _ in loader:
            pass


def test_cache_hits_only_for_the_same_teacher_data_and_plan(toy_cifar, tmp_path):
    teacher = _teacher()
    plan = AugmentationPlan(augment="crop", batch_size=64, seed=0, epochs=1)
    kw = dict(cache_dir=tmp_path, device="cpu", precision="fp32", progress=False)
    first = teacher_outputs(teacher, toy_cifar, plan, **kw)
    again = teacher_outputs(teacher, toy_cifar, plan, **kw)
    assert first.built and not again.built and torch.equal(first.logits, again.logits)
    with torch.no_grad():
        teacher.classifier.bias.add_(1e-3)  # a different teacher (weights changed slightly)
    assert teacher_outputs(teacher, toy_cifar, plan, **kw).built
    for other in (AugmentationPlan("crop", 64, 1, 1), AugmentationPlan("crop_flip", 64, 0, 1),
                  AugmentationPlan("crop", 32, 0, 1), AugmentationPlan("crop", 64, 0, 2)):
        assert teacher_outputs(teacher, toy_cifar, other, **kw).built, other
    assert len(list(tmp_path.glob("*.pt"))) == 6


def test_corrupt_cache_is_detected_and_rebuilt(toy_cifar, tmp_path):
    teacher = _teacher()
    plan = AugmentationPlan(augment="crop", batch_size=64, seed=0, epochs=1)
    kw = dict(cache_dir=tmp_path, device="cpu", precision="fp32", progress=False)
    outs = teacher_outputs(teacher, toy_cifar, plan, **kw)
    raw = bytearray(outs.path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    outs.path.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = teacher_outputs(teacher, toy_cifar, plan, **kw)
    assert rebuilt.built and any("rebuilding" in str(w.message) for w in caught)
    torch.testing.assert_close(rebuilt.logits, outs.logits, rtol=0, atol=0)


def test_interrupted_build_leaves_no_cache_file(toy_cifar, tmp_path):
    teacher = _teacher()
    calls = {"n": 0}

    def boom(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    handle = teacher.register_forward_hook(boom)
    plan = AugmentationPlan(augment="crop", batch_size=64, seed=0, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        teacher_outputs(teacher, toy_cifar, plan, cache_dir=tmp_path, device="cpu", precision="fp32", progress=False)
    handle.remove()
    assert list(tmp_path.iterdir()) == []


def test_cached_kd_tracks_online_kd(toy_cifar, tmp_path):
    """Same plan, same model seed: cached-output KD follows online KD up to fp16 rounding."""
    cfg = TrainConfig(epochs=2, batch_size=64, augment="crop_flip", optimizer="sgd", lr=0.02, device="cpu",
                      precision="fp32", seed=0)
    teacher = _teacher()
    runs = {}
    for cache in (True, False):
        torch.manual_seed(0)
        student = build_model("vgg8", width=0.125)
        res = distill(student, teacher, toy_cifar, cfg, cache=cache, cache_dir=tmp_path, temperature=4.0, alpha=0.9,
                      progress=False)
        runs[cache] = (student, res)
    assert runs[True][1].config["teacher_outputs"].startswith("plan cache")
    assert runs[False][1].config["teacher_outputs"] == "online teacher"
    h1, h0 = runs[True][1].history, runs[False][1].history
    assert abs(h1["train_loss_kd"][0] - h0["train_loss_kd"][0]) < 1e-3 * abs(h0["train_loss_kd"][0])
    for (k, a), b in zip(runs[True][0].state_dict().items(), runs[False][0].state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3, msg=k)


def test_fit_rejects_plan_outputs_that_do_not_cover_the_run(toy_cifar):
    student = build_model("vgg8", width=0.125)
    cfg = TrainConfig(epochs=3, batch_size=64, augment="crop", device="cpu", precision="fp32")
    short = torch.zeros(2, len(toy_cifar.y_train), 10)
    with pytest.raises(ValueError, match=r"do not cover this run"):
        fit(student, toy_cifar, cfg, method=HintonKD(student, None), plan_outputs={"logits": short}, progress=False)


def test_resume_with_cached_plan_outputs_ends_like_an_uninterrupted_run(toy_cifar, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=64, augment="crop_flip", optimizer="sgd", lr=0.02, device="cpu",
                      precision="fp32", seed=0)
    teacher = _teacher()
    outs = teacher_outputs(teacher, toy_cifar, AugmentationPlan.of(cfg), cache_dir=tmp_path, device="cpu",
                           precision="fp32", progress=False)

    def run(state_path=None, stop_after_batches=None, resume=False):
        torch.manual_seed(0)
        student = build_model("vgg8", width=0.125)
        seen = {"n": 0}

        def hook(module, *_):
            seen["n"] += module.training  # training batches only
            if stop_after_batches is not None and seen["n"] > stop_after_batches:
                raise KeyboardInterrupt  # interrupted in epoch 2, after epoch 1's state was saved
        h = student.register_forward_hook(hook)
        try:
            fit(student, toy_cifar, cfg, method=HintonKD(student, None, temperature=4.0), plan_outputs={"logits": outs.logits},
                state_path=state_path, resume=resume, progress=False, restore_best=False)
        finally:
            h.remove()
        return student

    full = run()
    batches_per_epoch = -(-len(toy_cifar.y_train) // 64)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "state.pt", stop_after_batches=batches_per_epoch + 2)  # third batch of epoch 2
    resumed = run(tmp_path / "state.pt", resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_plans_differing_only_in_length_share_their_first_epochs(toy_cifar, tmp_path, monkeypatch):
    """Epoch e of a plan is the same whatever its length: a longer plan computes only the epochs a cached
    shorter one lacks, and a shorter plan is served from a longer one's first epochs; both equal a fresh
    build, bit for bit."""
    import kd_utils.plans as P
    teacher = _teacher()
    kw = dict(device="cpu", precision="fp32", progress=False)
    fresh = {e: teacher_outputs(teacher, toy_cifar, AugmentationPlan("crop_flip", 64, 1, e), cache_dir=tmp_path / f"f{e}",
                                embed_layer="stage5", **kw) for e in (1, 2, 3)}
    computed = []
    real = P._compute
    monkeypatch.setattr(P, "_compute", lambda *a, start=0, **k: (computed.append((a[2].epochs, start)),
                                                                   real(*a, start=start, **k))[1])
    shared = tmp_path / "shared"
    two = teacher_outputs(teacher, toy_cifar, AugmentationPlan("crop_flip", 64, 1, 2), cache_dir=shared,
                          embed_layer="stage5", **kw)
    three = teacher_outputs(teacher, toy_cifar, AugmentationPlan("crop_flip", 64, 1, 3), cache_dir=shared,
                            embed_layer="stage5", **kw)
    one = teacher_outputs(teacher, toy_cifar, AugmentationPlan("crop_flip", 64, 1, 1), cache_dir=shared,
                          embed_layer="stage5", **kw)
    assert computed == [(2, 0), (3, 2)]  # the 3-epoch plan computed its last epoch only; the 1-epoch one nothing
    assert three.built and not one.built and one.path == two.path  # the shortest longer entry serves it
    for e, outs in ((1, one), (2, two), (3, three)):
        assert torch.equal(outs.logits, fresh[e].logits) and torch.equal(outs.embedding, fresh[e].embedding), e
    # another seed or augmentation is another lineage: nothing is shared
    assert teacher_outputs(teacher, toy_cifar, AugmentationPlan("crop_flip", 64, 2, 1), cache_dir=shared, **kw).built
    assert computed[-1] == (1, 0)
