"""The committed results file of Task 2 (LogitMatching_Limitations.ipynb): the keys its second edition names.

Reads ``results/metrics/limitations.json`` as committed (written by the notebook's reference execution) and
checks its structure and internal consistency, not its values: every CIFAR entry's mean and std are those
of its per-seed accuracies, the capacity-gap ladder spans the ratio it claims, and so on.
"""
import json
import statistics
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "results" / "metrics" / "limitations.json"
FIRST_EDITION_KEYS = ["profile", "wall_time_s", "seed", "compute_s", "omitted_class", "only_7_and_8", "capacity_gap",
                      "teacher_assistant", "fidelity", "agreement_accuracy_spearman", "label_smoothing", "small_student",
                      "cka_same_stage", "precision", "hardware", "versions"]
SECOND_EDITION_KEYS = ["self_distillation_independent", "capacity_gap_tiny", "teacher_assistant_tiny",
                       "label_smoothing_temperatures", "dkd_coupling", "logit_scale"]


@pytest.fixture(scope="module")
def results():
    return json.loads(PATH.read_text())


def check_seed_entry(e, where):
    """A CIFAR entry: {accuracy_per_seed, mean, std} with mean and std (ddof 1) of the per-seed values."""
    acc = e["accuracy_per_seed"]
    assert len(acc) >= 3, f"{where}: {len(acc)} seeds"
    assert all(0.0 <= a <= 1.0 for a in acc), f"{where}: accuracies are fractions"
    assert e["mean"] == pytest.approx(statistics.mean(acc), abs=1e-9), where
    assert e["std"] == pytest.approx(statistics.stdev(acc), abs=1e-9), where


def test_keys_of_both_editions(results):
    missing = [k for k in FIRST_EDITION_KEYS + SECOND_EDITION_KEYS if k not in results]
    assert not missing, f"limitations.json lacks {missing}"
    assert "test_optimal_bias" in results["omitted_class"]


def test_capacity_gap_tiny_spans_a_real_gap(results):
    ladder = results["capacity_gap_tiny"]
    assert len(ladder) >= 5
    for row in ladder:
        assert {"teacher", "param_ratio"} <= set(row)
        check_seed_entry(row, f"capacity_gap_tiny[{row['teacher']}]")
    ratios = [row["param_ratio"] for row in ladder]
    assert ratios == sorted(ratios) and ratios[-1] >= 150


def test_cifar_entries_are_seed_entries(results):
    for row in results["capacity_gap"]:
        check_seed_entry(row, f"capacity_gap[{row['teacher']}]")
    for k in ("direct", "via_assistant", "assistant"):
        check_seed_entry(results["teacher_assistant"][k], f"teacher_assistant.{k}")
    tiny = results["teacher_assistant_tiny"]
    for k in ("scratch", "direct", "via_one_assistant", "via_chain"):
        check_seed_entry(tiny[k], f"teacher_assistant_tiny.{k}")
    for k, v in results["self_distillation_independent"].items():
        check_seed_entry(v["student"], f"self_distillation_independent.{k}")
    check_seed_entry(results["label_smoothing"]["student_accuracy"], "label_smoothing.student_accuracy")
    check_seed_entry(results["dkd_coupling"]["dkd"], "dkd_coupling.dkd")
    check_seed_entry(results["logit_scale"]["standardised_kd"], "logit_scale.standardised_kd")


def test_label_smoothing_temperatures(results):
    lst = results["label_smoothing_temperatures"]
    assert set(lst) == {"1", "2", "4"}
    for t, v in lst.items():
        check_seed_entry(v, f"label_smoothing_temperatures[{t}]")
        check_seed_entry(v["plain_teacher"], f"label_smoothing_temperatures[{t}].plain_teacher")
        d = v["difference"]   # smoothed - plain, in points, paired over seeds
        diffs = [100 * (a - b) for a, b in zip(v["accuracy_per_seed"], v["plain_teacher"]["accuracy_per_seed"])]
        assert d["difference"] == pytest.approx(statistics.mean(diffs), abs=1e-6)


def test_omitted_class_test_optimal_bias_is_no_worse_than_validations(results):
    oc = results["omitted_class"]
    # the bias chosen on the test set minimises test errors, so it cannot do worse than the validation choice
    assert oc["test_optimal_bias"]["errors"] <= oc["errors_after_bias"] + 1e-9
