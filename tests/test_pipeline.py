"""The MNIST seed pipeline, the Hinton helpers and the CIFAR seed commands, at smoke scale."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd_utils import build_model, evaluate, get_data
from kd_utils import hinton
from kd_utils.checkpoint import load_model
from kd_utils.config import TrainConfig
from kd_utils.pipeline import load_and_split_data, run_pipeline, train_teacher

ROOT = Path(__file__).resolve().parents[1]
SEED_MODELS = {"teacher_model.pth", "student_regular.pth", "student_distilled.pth"}
SEED_PLOTS = {"teacher_training.png", "training_curves.png", "accuracy_comparison.png", "prediction_examples.png"}


def test_seed_programmatic_use_in_two_lines(monkeypatch):
    monkeypatch.setenv("KD_PROFILE", "smoke")
    train_loader, val_loader, *_ = load_and_split_data()
    teacher, train_loss, val_loss, train_acc, val_acc = train_teacher(train_loader, val_loader, epochs=1, progress=False)
    assert len(train_loss) == len(val_acc) == 1 and 0 < val_acc[0] <= 1
    # the seed split: 10% validation, seed 42
    b = train_loader.bundle
    assert len(b.y_val) == round(0.1 * 2000) and len(b.y_train) == 2000 - len(b.y_val)


def test_pipeline_writes_exactly_the_seed_files(tmp_path):
    res = run_pipeline(profile="smoke", epochs=1, out=tmp_path, progress=False)
    models = tmp_path / "models" / "smoke"
    results = tmp_path / "results" / "smoke"
    assert {p.name for p in models.glob("*.pth")} == SEED_MODELS
    assert {p.name for p in (models / "training_state").iterdir()} == {"teacher.pth", "student_regular.pth",
                                                                       "student_distilled.pth"}
    assert SEED_PLOTS == {p.name for p in (results / "plots").iterdir()}
    metrics = json.loads((results / "metrics" / "evaluation.json").read_text())
    assert set(metrics["models"]) == {"teacher", "student_regular", "student_distilled"}
    assert metrics["config"]["temperature"] == 5.0 and metrics["config"]["alpha"] == 0.5
    csv = pd.read_csv(results / "metrics" / "evaluation.csv", index_col=0)
    assert csv.loc["teacher", "errors"] == res.results["teacher"].errors
    preds = pd.read_csv(results / "predictions" / "test_predictions.csv")
    assert len(preds) == 500 and (preds["pred_teacher"] == res.results["teacher"].preds.numpy()).all()
    # a saved model loads back and gives the same test accuracy
    back = load_model(models / "student_distilled.pth", expected="mnist_mlp")
    data = get_data("mnist", train_subset=2000, test_subset=500)
    assert evaluate(back, data).accuracy == pytest.approx(res.results["student_distilled"].accuracy)
    assert res.cost.loc["student_regular", "flops"] < res.cost.loc["teacher", "flops"]


def test_hinton_table_and_targets():
    runs = pd.DataFrame({"model": ["student_scratch", "student_kd"] * 3, "errors": [150, 75, 140, 70, 160, 80]})
    table = hinton.hinton_table(60, runs)
    assert table.loc["student_kd", "errors"] == 75 and table.loc["student_scratch", "errors"] == 150
    assert table.loc["student_kd", "errors_std"] == pytest.approx(5.0)  # sample std of 75, 70, 80
    assert table.loc["teacher", "paper_errors"] == 67
    t = hinton.check_targets(table)
    assert t["met"].all()
    worse = hinton.check_targets(hinton.hinton_table(68, runs))  # one error over the paper's teacher
    assert worse["met"].tolist() == [False, True, True]
    small_gain = pd.DataFrame({"model": ["student_scratch", "student_kd"], "errors": [139, 80]})
    assert hinton.check_targets(hinton.hinton_table(60, small_gain))["met"].tolist() == [True, True, False]
    js = hinton.table_json(table, "cpu", 20.0, {"teacher": 60, "student": 30}, 12.3, train_images=60000)
    assert set(js) >= {"teacher", "student_scratch", "student_kd", "profile", "temperature", "epochs", "wall_time_s",
                       "train_images"}
    assert js["student_kd"]["errors_per_seed"] == [75, 70, 80]


def test_student_runs_use_one_teacher_and_report_every_seed(tmp_path):
    data = get_data("mnist", train_subset=1000, test_subset=200)
    torch.manual_seed(0)
    teacher = build_model("hinton_teacher")
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", precision="fp32")
    runs, hist = hinton.student_runs(data, cfg, [0, 1], teacher, progress=False, root=tmp_path)
    assert sorted(zip(runs["model"], runs["seed"])) == [("student_kd", 0), ("student_kd", 1),
                                                        ("student_scratch", 0), ("student_scratch", 1)]
    assert set(hist) == {("student_kd", 0), ("student_kd", 1), ("student_scratch", 0), ("student_scratch", 1)}
    assert runs["errors"].between(0, 200).all()
    again, _ = hinton.student_runs(data, cfg, [0], teacher, progress=False, root=tmp_path)  # memoised
    assert again["errors"].tolist() == runs.loc[runs["seed"] == 0, "errors"].tolist()


def test_student_runs_keep_the_last_epoch_when_asked(tmp_path):
    """restore_best=False reaches every student run: its name says -last, its key differs, and the stored
    model is the last epoch's (its validation accuracy is the history's last row, not the best)."""
    from kd_utils.train_eval import evaluate
    data = get_data("mnist", train_subset=600, test_subset=200, val_fraction=0.2)
    torch.manual_seed(0)
    teacher = build_model("hinton_teacher")
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.5, device="cpu", precision="fp32")  # lr high: epochs differ
    last, _ = hinton.train_student(data, cfg, 0, teacher, restore_best=False, keep_weights=True, root=tmp_path)
    best, _ = hinton.train_student(data, cfg, 0, teacher, keep_weights=True, root=tmp_path)
    assert last.name == "hinton-student_kd-last-e3-T20-s0" and best.name == "hinton-student_kd-e3-T20-s0"
    assert last.spec["restore_best"] is False and "restore_best" not in best.spec and last.key != best.key
    assert best.metrics["best_epoch"] != 3  # the premise: the best epoch is not the last one
    assert evaluate(last.model, data, "val").accuracy == pytest.approx(last.history["val_acc"].iloc[-1], abs=1e-6)
    assert evaluate(best.model, data, "val").accuracy == pytest.approx(best.history["val_acc"].max(), abs=1e-6)
    table, _ = hinton.student_runs(data, cfg, [0], teacher, kinds=["student_kd"], restore_best=False, progress=False,
                                   root=tmp_path)
    assert table["errors"].tolist() == [int(last.metrics["test_errors"])]  # the same run, reused


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "kd_utils", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, needle", [
    (["pipeline", "--temperature", "0"], "--temperature: expected a finite number > 0, got 0"),
    (["pipeline", "--alpha", "1.5"], "--alpha: expected a number in [0, 1], got 1.5"),
    (["pipeline", "--epochs", "zero"], "--epochs: expected a positive integer, got 'zero'"),
    (["pipeline", "--batch-size", "-1"], "--batch-size: expected a positive integer, got -1"),
    (["pipeline", "--test-size", "1"], "--test-size: expected a fraction in (0, 1), got 1.0"),
    (["distill", "--profile", "laptop"], "invalid choice: 'laptop'"),
])
def test_cli_rejects_bad_flags(args, needle):
    r = _cli(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_cli_help_lists_the_seed_flags():
    out = _cli("distill", "--help").stdout
    for flag in ("--batch-size", "--epochs", "--num-workers", "--temperature", "--alpha", "--train-teacher",
                 "--profile", "--device", "--seed", "--out"):
        assert flag in out


def test_cli_distill_without_teacher_and_cuda_without_gpu(tmp_path):
    r = _cli("distill", "--profile", "smoke", "--out", str(tmp_path))
    assert r.returncode == 2 and "no teacher checkpoint" in r.stderr and "best_teacher.pth" in r.stderr
    assert "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = _cli("pipeline", "--device", "cuda", "--out", str(tmp_path))
        assert r.returncode == 2 and "no CUDA GPU is available" in r.stderr


def test_cli_cifar_seed_end_to_end(tmp_path):
    r = _cli("distill", "--train-teacher", "--profile", "smoke", "--epochs", "1", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    models = tmp_path / "models" / "smoke"
    assert {p.name for p in models.glob("*.pth")} == {"best_teacher.pth", "best_student_kd.pth", "best_student_base.pth"}
    assert "Student Network (with KD)" in r.stdout and "Knowledge Distillation Improvement" in r.stdout
    assert load_model(models / "best_teacher.pth").arch["name"] == "cifar_resnet"


def test_distilled_student_equals_hand_built_hinton_kd_on_cached_logits(tmp_path):
    """train_student (memoised run) == fit with HintonKD on logits computed here (then rounded to the
    float16 a run stores), bit for bit."""
    from kd_utils.experiments import cache_teacher_logits
    from kd_utils.runtime import seed_everything
    from kd_utils.train_eval import fit
    from kd_utils.train_kd import HintonKD
    data = get_data("mnist", train_subset=600, test_subset=100)
    torch.manual_seed(0)
    teacher = build_model("hinton_teacher").eval()
    cfg = TrainConfig(epochs=2, batch_size=128, device="cpu", precision="fp32")
    run, row = hinton.train_student(data, cfg, 3, teacher, temperature=4.0, alpha=0.7, progress=False, root=tmp_path)
    logits = cache_teacher_logits(teacher, data, "train", device="cpu", precision="fp32")
    seed_everything(3)
    hand = build_model("hinton_student")
    fit(hand, data, cfg.replace(seed=3), method=HintonKD(hand, teacher, temperature=4.0, alpha=0.7),
        teacher_outputs={"logits": logits}, progress=False)
    from kd_utils.runs import round_weights
    round_weights(hand)  # a run's model is its stored float16 weights
    for a, b in zip(run.model.state_dict().values(), hand.state_dict().values()):
        assert torch.equal(a, b)
    assert row["errors"] == evaluate(hand, data, device="cpu", precision="fp32").errors


def test_length_study_reports_validation_errors_and_refuses_the_test_set(tmp_path):
    data = get_data("mnist", train_subset=800, test_subset=100)
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", precision="fp32")
    table, runs = hinton.length_study(data, cfg, [1, 2], progress=False, root=tmp_path)
    assert table["epochs"].tolist() == [1, 2] and [len(runs[n].history) for n in (1, 2)] == [1, 2]
    for n in (1, 2):  # the run keeps its best validation epoch: its errors there, counted afresh
        row = table.set_index("epochs").loc[n]
        assert row["val_errors_best"] == evaluate(runs[n].model, data, "val", device="cpu", precision="fp32").errors
        assert row["val_errors_best"] <= row["val_errors_last"]
    with pytest.raises(ValueError, match="needs a validation split"):
        hinton.length_study(hinton.paper_data("smoke"), cfg, [1], progress=False, root=tmp_path)
    with pytest.raises(ValueError, match=r"positive epoch counts, got \[0\]"):
        hinton.length_study(data, cfg, [0], progress=False, root=tmp_path)


def test_paper_data_trains_on_every_image():
    full = hinton.paper_data("smoke")
    assert len(full.y_val) == 0 and len(full.y_train) == 2000


def test_seed_pipeline_with_a_profile_trains_once_then_reuses_and_replays(tmp_path, monkeypatch, capsys):
    """The notebook's memoised path: with ``profile=`` the teacher and both students are stored runs; a
    second call trains nothing and returns the same models and histories."""
    from kd_utils.pipeline import prepare_distillation_data, train_students
    monkeypatch.setenv("KD_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("KD_PROFILE", "smoke")
    train_loader, val_loader, *_ = load_and_split_data()

    def once(mode):
        monkeypatch.setenv("KD_RUNS", mode)
        teacher, *_ = train_teacher(train_loader, val_loader, epochs=1, progress=True, profile="smoke")
        tl, vl = prepare_distillation_data(teacher, train_loader, val_loader)
        reg, dist, hist = train_students(teacher, train_loader, val_loader, tl, vl, epochs=1, profile="smoke")
        return teacher, reg, dist, hist

    first = once("reuse")
    assert capsys.readouterr().out.count("[trained]") == 3
    assert (tmp_path / "models" / "smoke" / "runs").is_dir()
    second = once("reuse")
    out = capsys.readouterr().out
    assert out.count("[reused]") == 3 and "[trained]" not in out
    for a, b in zip(first[:3], second[:3]):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        pd.testing.assert_frame_equal(a.fit_result.history, b.fit_result.history, check_dtype=False)
    # the regular and the distilled student share their initial weights and differ only by the teacher
    assert first[2].run.spec["method"] == "kd" and first[1].run.spec["method"] == "ce"
    assert first[2].run.spec["teacher_sha256"] is not None and first[1].run.spec["teacher_sha256"] is None


def test_hinton_loops_run_through_an_executor_with_the_same_keys(tmp_path):
    """An EXECUTOR other than None trains the same specifications as the in-process loop: runs made in
    this process are found (reused) by a sweep on an executor, with the same numbers."""
    from concurrent.futures import ThreadPoolExecutor
    data = get_data("mnist", train_subset=600, test_subset=200)
    torch.manual_seed(0)
    teacher = build_model("hinton_teacher")
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", precision="fp32")
    here = hinton.temperature_sweep(data, cfg, teacher, [2.0, 8.0], progress=False, root=tmp_path)
    with ThreadPoolExecutor(1) as pool:
        there = hinton.temperature_sweep(data, cfg, teacher, [2.0, 8.0], progress=False, root=tmp_path, executor=pool)
    assert here["temperature"].tolist() == [2.0, 8.0]
    assert there[["temperature", "errors", "accuracy"]].equals(here[["temperature", "errors", "accuracy"]])
    assert len({f.parent.name for f in tmp_path.rglob("hinton-student_kd-e1-T*/run.json")}) == 2  # trained once
    with pytest.raises(ValueError, match=r"unsupported keyword\(s\) \['epochs'\]; allowed: profile, mode, root"):
        hinton.temperature_sweep(data, cfg, teacher, [2.0], progress=False, epochs=3)
