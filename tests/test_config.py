from __future__ import annotations

import pytest

from kd_utils.config import PROFILES, KDConfig, TrainConfig, get_profile, output_dirs


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
    ({"batch_size": -4}, "batch_size must be an int >= 1"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"schedule": "linear"}, "unknown schedule 'linear'"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"augment": "mixup"}, "unknown augment 'mixup'"),
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ({"seed": -1}, "seed must be an int >= 0"),
])
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
                                           ({"alpha": -0.1}, "alpha must be in \\[0, 1\\], got -0.1"),
                                           ({"alpha": 1.01}, "alpha must be in")])
def test_kd_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDConfig(**kwargs)


def test_seed_defaults():
    k = KDConfig()
    assert (k.temperature, k.alpha) == (5.0, 0.5)
    t = TrainConfig()
    assert (t.batch_size, t.epochs) == (128, 10)


def test_profiles_from_argument_environment_and_default(monkeypatch):
    monkeypatch.delenv("KD_PROFILE", raising=False)
    assert get_profile().name == "cpu"
    monkeypatch.setenv("KD_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("gpu").name == "gpu"
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        get_profile("laptop")


def test_every_profile_builds_every_recipe_and_smoke_is_small():
    for prof in PROFILES.values():
        for recipe in prof.recipes:
            assert isinstance(prof.train(recipe), TrainConfig)
    smoke, cpu = PROFILES["smoke"], PROFILES["cpu"]
    assert smoke.train_subset <= 5000 and all(smoke.train(r).epochs == 1 for r in smoke.recipes)
    assert cpu.train_subset is None
    assert PROFILES["gpu"].train("cifar_student").milestones == (150, 180, 210)


def test_recipe_overrides_and_unknown_keys():
    prof = get_profile("cpu")
    assert prof.train("mnist_seed", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown TrainConfig field\\(s\\) \\['epoch'\\]"):
        prof.train("mnist_seed", epoch=3)
    with pytest.raises(ValueError, match="has no recipe 'imagenet'"):
        prof.train("imagenet")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig().replace(lrate=1)


def test_output_dirs_keep_non_default_profiles_apart(tmp_path):
    ref = output_dirs("cpu", root=tmp_path)
    smoke = output_dirs("smoke", root=tmp_path)
    assert ref["models"] == tmp_path / "models" and ref["plots"] == tmp_path / "results" / "plots"
    assert smoke["metrics"] == tmp_path / "results" / "smoke" / "metrics"
    assert all(p.is_dir() for p in [*ref.values(), *smoke.values()])
