"""The notebook explorers (kd_utils.explore), driven headless: controls set from code, the numbers they
show checked against hand computations; the run browser on a store of two tiny real runs; and the
static fallback an HTML export of an executed notebook shows."""
from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from kd_utils import explore, runs
from kd_utils.config import TrainConfig
from kd_utils import experiments
from kd_utils.experiments import run_experiment
from kd_utils.plans import teacher_digest

from conftest import make_bundle

TESTS = Path(__file__).resolve().parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _logits(n=60, k=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale


def _softmax_by_hand(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------ temperature ----
def test_temperature_explorer_shows_softmax_at_the_chosen_temperature():
    t, s = _logits(seed=0), _logits(seed=1)
    labels = t.argmax(1)
    images = torch.randint(0, 256, (60, 3, 8, 8), dtype=torch.uint8)
    ex = explore.temperature_explorer(t, s, images=images, classes=[f"c{i}" for i in range(10)], labels=labels,
                                      indices=[5, 0, 17], temperatures=[1, 2, 4, 8])
    assert ex.state["temperature"] == 4.0  # the default when offered
    for temp in (8.0, 1.0):
        ex.controls["temperature"].value = temp
        st = ex.state
        pt = _softmax_by_hand(t.double().numpy()[[5, 0, 17]], temp)
        ps = _softmax_by_hand(s.double().numpy()[[5, 0, 17]], temp)
        assert st["temperature"] == temp and st["indices"] == [5, 0, 17]
        np.testing.assert_allclose(st["teacher"], pt, rtol=1e-9)
        np.testing.assert_allclose(st["student"], ps, rtol=1e-9)
        np.testing.assert_allclose(st["teacher_entropy"], -(pt * np.log(pt)).sum(1), rtol=1e-9)
        np.testing.assert_allclose(st["kl"], (pt * (np.log(pt) - np.log(ps))).sum(1), rtol=1e-7, atol=1e-12)
    # the table the widget and the text view show holds the same numbers
    table = ex.table(ex.state)
    assert list(table.index) == [5, 0, 17]
    assert table.loc[0, "teacher_p_top1"] == pytest.approx(pt[1].max())
    assert table.loc[17, "label"] == f"c{int(labels[17])}"
    assert ex.png().startswith(PNG_MAGIC)
    ex.set(temperature=2, log_scale=True)
    assert ex.state["temperature"] == 2.0 and ex.state["log_scale"]


def test_temperature_explorer_with_only_a_teacher_and_its_errors():
    t = _logits(n=8)
    ex = explore.temperature_explorer(t, temperatures=[1, 20], temperature=20)
    assert ex.state["student"] is None and ex.state["kl"] is None and ex.state["indices"] == [0, 1, 2, 3]
    np.testing.assert_allclose(ex.state["teacher"], _softmax_by_hand(t.double().numpy()[:4], 20.0), rtol=1e-9)
    assert "student_top1" not in ex.table(ex.state).columns
    with pytest.raises(ValueError, match=r"temperature=3 is not one of the slider's values \[1.0, 20.0\]"):
        explore.temperature_explorer(t, temperatures=[1, 20], temperature=3)
    with pytest.raises(ValueError, match=r"indices must be 1 to 8 distinct rows in 0..7, got \[9\]"):
        explore.temperature_explorer(t, indices=[9])
    with pytest.raises(ValueError, match=r"student_logits has shape \(8, 5\)"):
        explore.temperature_explorer(t, _logits(n=8, k=5))
    with pytest.raises(ValueError, match="unknown control"):
        explore.temperature_explorer(t).set(bias=1)


# ------------------------------------------------------------------------ bias ----
def test_bias_explorer_counts_errors_like_a_hand_count():
    z, y = _logits(n=200, seed=2), torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(3))
    ex = explore.bias_explorer(z, y, 3, biases=[0, 1.5, 2.5, 6], chosen=2.5)
    zn, yn = z.numpy(), y.numpy()
    for b in (0.0, 2.5, 6.0):
        ex.controls["bias"].value = b
        shifted = zn.copy()
        shifted[:, 3] += b
        pred = shifted.argmax(1)
        wrong = pred != yn
        st = ex.state
        assert st["bias"] == b
        assert st["errors"] == int(wrong.sum())
        assert st["errors_on_class"] == int((wrong & (yn == 3)).sum())
        assert st["errors_elsewhere"] == int((wrong & (yn != 3)).sum())
        assert st["class_images"] == int((yn == 3).sum())
        assert st["predicted_as_class"] == int((pred == 3).sum())
        assert list(st["class_predictions"]) == [int(((yn == 3) & (pred == j)).sum()) for j in range(10)]
    # two omitted classes (the 7-and-8 transfer set): both biased
    ex2 = explore.bias_explorer(z, y, [7, 8], biases=[-4, 0])
    ex2.set(bias=-4)
    shifted = zn.copy()
    shifted[:, [7, 8]] -= 4
    wrong = shifted.argmax(1) != yn
    assert ex2.state["errors"] == int(wrong.sum())
    assert ex2.state["errors_on_class"] == int((wrong & np.isin(yn, [7, 8])).sum())
    assert ex2.png().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match=r"omitted_class must be a class index in 0..9.*got 10"):
        explore.bias_explorer(z, y, 10)
    with pytest.raises(ValueError, match="labels must be 200 integer class indices"):
        explore.bias_explorer(z, y[:5], 3)


# ------------------------------------------------------------------- ensembles ----
def test_ensemble_explorer_accuracy_and_disagreement_by_hand():
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(4))
    members = [_logits(n=300, seed=10 + i) + 4 * torch.nn.functional.one_hot(y, 10) * (i + 1) / 4 for i in range(4)]
    teacher = _logits(n=300, seed=20) + 5 * torch.nn.functional.one_hot(y, 10)
    ex = explore.ensemble_explorer({"independent": members, "pair": members[:2]}, y, teacher_logits=teacher,
                                   names=None)
    assert ex.state["size"] == 4 and ex.state["members"] == ["s0", "s1", "s2", "s3"]
    ex.controls["members"].value = (0, 2, 3)
    ex.controls["size"].value = 2
    st = ex.state
    assert st["members"] == ["s0", "s2"] and st["picked"] == ["s0", "s2", "s3"]
    pn = [torch.softmax(members[i].double(), 1).numpy() for i in (0, 2)]
    pred = ((pn[0] + pn[1]) / 2).argmax(1)
    assert st["accuracy"] == pytest.approx(float((pred == y.numpy()).mean()))
    a0, a2 = (members[0].argmax(1) == y).double().mean().item(), (members[2].argmax(1) == y).double().mean().item()
    assert st["mean_member_accuracy"] == pytest.approx((a0 + a2) / 2)
    assert st["gain"] == pytest.approx(st["accuracy"] - (a0 + a2) / 2)
    assert st["disagreement"] == pytest.approx(float((members[0].argmax(1) != members[2].argmax(1)).double().mean()))
    assert st["teacher_agreement"] == pytest.approx(float((teacher.numpy().argmax(1) == pred).mean()))
    assert st["matrix"].shape == (3, 3)  # teacher and the two members
    assert st["matrix"][0, 1] == pytest.approx(float((teacher.argmax(1) != members[0].argmax(1)).double().mean()))
    assert len(st["curve"]) == 3 and st["curve"][1] == pytest.approx(st["accuracy"])
    # fewer picked members than the size: the slider clamps
    ex.controls["members"].value = (1,)
    assert ex.state["size"] == 1 and ex.state["members"] == ["s1"] and math.isnan(ex.state["disagreement"])
    ex.controls["group"].value = "pair"
    assert ex.state["group"] == "pair" and ex.state["members"] == ["s0", "s1"]
    assert ex.png().startswith(PNG_MAGIC)
    ex.controls["members"].value = ()
    assert ex.state["members"] == [] and math.isnan(ex.state["accuracy"]) and ex.png().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="one shape"):
        explore.ensemble_explorer([members[0], members[1][:10]], y)


# ------------------------------------------------------------------ stored runs ----
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny real runs in a temporary run store: a CE run (seed 0) and a KD run from it (seed 1)."""
    root = tmp_path_factory.mktemp("store")
    data = make_bundle(n_train=192, n_val=48, n_test=96)
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu", precision="fp32", lr=0.05)
    mp = pytest.MonkeyPatch()
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV, runs.REFERENCE_ENV):
        mp.delenv(k, raising=False)
    try:
        common = dict(profile="cpu", root=root, progress=False)
        ce = run_experiment("scratch-s0", {"name": "mlp", "hidden": [24]}, data, cfg, **common)
        kd = run_experiment("kd-s1", {"name": "mlp", "hidden": [16]}, data, cfg.replace(seed=1), method="kd",
                            teacher=ce.model, temperature=4.0, alpha=0.9, **common)
    finally:
        mp.undo()
    return root, data, ce, kd


def test_run_records_lists_every_stored_run(two_runs):
    root, data, ce, kd = two_runs
    df = explore.run_records(root)
    assert len(df) == 2 and set(df["name"]) == {"scratch-s0", "kd-s1"}
    row = df.set_index("name").loc["kd-s1"]
    stored = json.loads((kd.path / "run.json").read_text())
    logits = torch.load(kd.path / "logits.pt", weights_only=True)["test"].float()
    assert row["accuracy"] == pytest.approx(float((logits.argmax(1) == data.y_test).double().mean()))
    assert row["accuracy"] == stored["metrics"]["test_accuracy"] and row["ece"] == stored["metrics"]["ece"]
    assert (row["method"], row["seed"], row["epochs_trained"], row["temperature"], row["alpha"]) == ("kd", 1, 2, 4.0, 0.9)
    assert row["group"] == "kd" and row["student"] == "mlp(hidden=[16])" and row["profile"] == "cpu"
    assert row["teacher"] == teacher_digest(ce.model)[:12] and row["train_time_s"] > 0
    assert row["store"] == "training" and row["weights"] and Path(row["path"]) == kd.path
    ce_row = df.set_index("name").loc["scratch-s0"]
    assert ce_row["method"] == "ce" and pd.isna(ce_row["temperature"]) and pd.isna(ce_row["teacher"])
    assert math.isnan(row["agreement"])  # records hold no teacher numbers unless asked
    # filter-friendly: plain boolean selection and query
    assert list(df[(df.method == "kd") & (df.temperature == 4)]["name"]) == ["kd-s1"]
    assert list(df.query("seed == 0")["name"]) == ["scratch-s0"]
    # agreement with a teacher given by its digest
    t_logits = experiments.test_logits(ce.model, data)
    with_t = explore.run_records(root, "cpu", teachers={teacher_digest(ce.model): t_logits}).set_index("name")
    assert with_t.loc["kd-s1", "agreement"] == pytest.approx(float((t_logits.argmax(1) == logits.argmax(1)).double().mean()))
    assert math.isnan(with_t.loc["scratch-s0", "agreement"])
    assert explore.run_records(root, "smoke").empty  # another profile's store holds none
    # a run committed to the reference store as well (record and logits, no weights) is still one row
    ref = runs.stores("cpu", root)["reference"] / kd.path.name
    ref.mkdir(parents=True)
    for f in ("run.json", "history.csv", "logits.pt"):
        (ref / f).write_bytes((kd.path / f).read_bytes())
    both = explore.run_records(root).set_index("name")
    assert len(both) == 2 and both.loc["kd-s1", "store"] == "training+reference" and both.loc["kd-s1", "weights"]
    assert Path(both.loc["kd-s1", "path"]) == kd.path
    with pytest.raises(ValueError, match="teachers must map a teacher's sha256"):
        explore.run_records(root, teachers={"abc": t_logits})


def test_plot_runs_draws_each_selected_history(two_runs):
    import matplotlib.pyplot as plt
    root, _, ce, kd = two_runs
    df = explore.run_records(root)
    fig = explore.plot_runs(df, "val_acc")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"scratch-s0", "kd-s1"}
    np.testing.assert_allclose(lines["kd-s1"].get_ydata(), kd.history["val_acc"].to_numpy())
    plt.close(fig)
    fig = explore.plot_runs(df[df.method == "kd"], "train_loss_kd")
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["kd-s1"]
    plt.close(fig)
    with pytest.raises(ValueError, match=r"no selected run's history has a column 'bogus'; columns: \[.*'val_acc'"):
        explore.plot_runs(df, "bogus")


def test_run_explorer_over_runs_and_over_records(two_runs):
    root, _, ce, kd = two_runs
    ex = explore.run_explorer({"scratch": [ce], "kd": [kd]}, cka={"kd": np.array([[0.9, 0.2], [0.3, 0.5]])},
                              layers=["stage1", "stage2"])
    st = ex.state
    h = ce.history
    assert st["method"] == "scratch" and st["seeds"] == [0] and st["cka"] is None
    assert st["final_val_acc"] == pytest.approx(h["val_acc"].iloc[-1])
    assert st["best_val_acc"] == pytest.approx(h["val_acc"].max())
    assert st["loss_terms"] == {"ce": pytest.approx(h["train_loss_ce"].iloc[-1])}
    ex.controls["method"].value = "kd"
    st, h = ex.state, kd.history
    assert st["method"] == "kd" and st["seeds"] == [1] and st["test_accuracy"] == pytest.approx(kd.accuracy)
    assert set(st["loss_terms"]) == {c[len("train_loss_"):] for c in h.columns if c.startswith("train_loss_")} >= {"kd"}
    assert st["loss_terms"]["kd"] == pytest.approx(h["train_loss_kd"].iloc[-1])
    assert st["cka_same_stage"] == [0.9, 0.5] and st["cka_mean"] == pytest.approx(0.7)
    ex.controls["seed"].value = 1
    assert ex.state["runs"] == ["kd-s1"] and ex.png().startswith(PNG_MAGIC)
    # a run_records selection works the same way, histories read from the run folders
    from_df = explore.run_explorer(explore.run_records(root))
    assert set(from_df.controls["method"].options) == {"scratch", "kd"}
    from_df.set(method="kd")
    assert from_df.state["final_val_acc"] == pytest.approx(kd.history["val_acc"].iloc[-1])
    with pytest.raises(ValueError, match="cka has method 'fitnets'"):
        explore.run_explorer([ce, kd], cka={"fitnets": np.eye(2)})


# ------------------------------------------------------------ static fallback ----
def test_an_exported_notebook_shows_the_explorer_without_a_widget_manager(tmp_path):
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor
    code = ["import torch\nfrom kd_utils.explore import temperature_explorer\n"
            "g = torch.Generator().manual_seed(0)\nt = torch.randn(20, 10, generator=g) * 3\n"
            "s = t + torch.randn(20, 10, generator=g)",
            "temperature_explorer(t, s, labels=t.argmax(1), indices=[0, 1])"]
    nb = new_notebook(cells=[new_code_cell(c) for c in code],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    ExecutePreprocessor(timeout=120, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    (out,) = nb.cells[1].outputs
    # one output, three views: the widget, and the PNG and text for everything else
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"} <= set(out["data"])
    assert base64.b64decode(out["data"]["image/png"]).startswith(PNG_MAGIC)
    assert "teacher_entropy" in out["data"]["text/plain"] and "kl_teacher_student" in out["data"]["text/plain"]
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata["widgets"]
    # saved with widget state, the HTML draws the widget through the widgets' script ...
    with_state, _ = HTMLExporter().from_notebook_node(nb)
    assert 'type="application/vnd.jupyter.widget-state+json"' in with_state
    # ... without it (GitHub-like static rendering), the PNG of the default state is the output
    del nb.metadata["widgets"]
    static, _ = HTMLExporter().from_notebook_node(nb)
    assert re.search(r'<img [^>]*src="data:image/png;base64,' + re.escape(out["data"]["image/png"][:60]), static)
    nbformat.write(nb, tmp_path / "explorer.ipynb")
