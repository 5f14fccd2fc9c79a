from __future__ import annotations

import pytest

from kd_utils.names import run_name


@pytest.mark.parametrize("args, kwargs, expected", [
    (("ce",), {}, "scratch"),
    (("kd",), {"alpha": 0.9, "temperature": 4}, "kd_T4_a0.9"),        # the order is the table's, not the call's
    (("kd",), {"temperature": 4.0, "alpha": 1.0}, "kd_T4_a1"),          # 4.0 and 4 name the same run
    (("mse",), {"alpha": 0.9}, "mse_a0.9"),
    (("dkd",), {"alpha": 1, "beta": 8, "seed": 2}, "dkd_a1_b8-s2"),
    (("kd_permuted",), {"temperature": 4, "alpha": 0.9, "epochs": 60}, "kd_permuted_T4_a0.9_e60"),
    (("ce",), {"epochs": 60, "seed": 0}, "scratch_e60-s0"),
])
def test_run_names(args, kwargs, expected):
    assert run_name(*args, **kwargs) == expected


@pytest.mark.parametrize("kwargs, needle", [
    ({"method": "kd", "tau": 4}, r"unknown hyper-parameter\(s\) \['tau'\] for a run name; known: temperature, alpha"),
    ({"method": "kd-x"}, "method must be a non-empty name without"),
    ({"method": "kd", "temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"method": "kd", "epochs": 0}, "epochs must be a whole number >= 1, got 0"),
    ({"method": "kd", "seed": -1}, "seed must be a whole number >= 0, got -1"),
])
def test_bad_names_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        run_name(kwargs.pop("method"), **kwargs)


def test_ce_weight_is_named_last_so_earlier_names_are_unchanged():
    assert run_name("at_kd", temperature=4.0, alpha=1.0, ce_weight=1.0) == "at_kd_T4_a1_ce1"
    assert run_name("at_kd", temperature=4.0, alpha=0.9) == "at_kd_T4_a0.9"
