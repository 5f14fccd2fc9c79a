"""Your own data: DataBundle.from_tensors / from_dataset, and the data sets torchvision hosts."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

import kd_utils.data as D
from kd_utils.data import catalog as data_catalog
from kd_utils.data import web as W
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.models import build_model
from kd_utils.train_eval import evaluate, fit


def _images(n, shape=(3, 8, 8), seed=0):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_from_tensors_split_sizes_determinism_and_statistics():
    x, y = _images(200), torch.arange(200) % 4
    xt, yt = _images(40, seed=1), torch.arange(40) % 4
    a = D.DataBundle.from_tensors(x, y, xt, yt, classes=["a", "b", "c", "d"], val_fraction=0.25, seed=3)
    b = D.DataBundle.from_tensors(x, y, xt, yt, classes=["a", "b", "c", "d"], val_fraction=0.25, seed=3)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (150, 50, 40)
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.x_val, b.x_val)
    assert sorted(a.train_idx.tolist() + a.val_idx.tolist()) == list(range(200))
    assert not torch.equal(a.val_idx, D.DataBundle.from_tensors(x, y, xt, yt, val_fraction=0.25, seed=4).val_idx)
    # statistics: hand computation over every given training image (validation part included, as the
    # built-in data sets' statistics are over their full training sets), per channel, 0-1 scale
    pix = x.numpy().astype(np.float64) / 255.0
    for c in range(3):
        assert a.mean[c] == pytest.approx(pix[:, c].mean(), abs=1e-12)
        assert a.std[c] == pytest.approx(pix[:, c].std(), abs=1e-12)
    assert a.classes == ["a", "b", "c", "d"] and a.num_classes == 4
    assert next(iter(a.loader("train", batch_size=16)))[0].shape == (16, 3, 8, 8)


def test_from_tensors_accepts_float_and_channels_last_and_greyscale():
    x = _images(30, (8, 8, 3))                         # channels last
    f = x.float() / 255                                 # float in [0, 1]
    a = D.from_tensors(x, torch.zeros(30, dtype=torch.long), x[:5], torch.zeros(5, dtype=torch.long), num_classes=2)
    b = D.from_tensors(f, torch.zeros(30, dtype=torch.long), f[:5], torch.zeros(5, dtype=torch.long), num_classes=2)
    assert a.shape == (3, 8, 8) and torch.equal(a.x_train, b.x_train)
    g = D.from_tensors(_images(10, (5, 5)), torch.ones(10, dtype=torch.long), _images(3, (5, 5)),
                       torch.ones(3, dtype=torch.long))
    assert g.shape == (1, 5, 5) and g.num_classes == 2


@pytest.mark.parametrize("args, needle", [
    (dict(x_train=torch.zeros(10, 3)), "must be images shaped"),
    (dict(x_train=torch.full((10, 3, 4, 4), 2.0)), "float images must lie in"),
    (dict(x_train=torch.zeros(10, 3, 4, 4, dtype=torch.int32)), "uint8 .* or float"),
    (dict(y_train=torch.zeros(9, dtype=torch.long)), "1-D sequence of 10 labels"),
    (dict(y_train=torch.zeros(10)), "integer class indices"),
    (dict(y_train=torch.full((10,), -1)), r"labels in \[-1, -1\], outside 0..2"),
    (dict(x_test=torch.zeros(0, 3, 4, 4, dtype=torch.uint8), y_test=torch.zeros(0, dtype=torch.long)), "x_test is empty"),
    (dict(x_test=torch.zeros(2, 3, 5, 5, dtype=torch.uint8)), "differ in shape"),
    (dict(classes=["a", "b"]), "2 class names given for 3 classes"),
    (dict(std=(0.1, 0.0, 0.1)), "std > 0"),
])
def test_from_tensors_bad_input_is_named(args, needle):
    kw = dict(x_train=torch.zeros(10, 3, 4, 4, dtype=torch.uint8), y_train=torch.arange(10) % 3,
              x_test=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), y_test=torch.arange(2))
    kw.update(args)
    extra = {k: kw.pop(k) for k in ("classes", "std") if k in kw}
    with pytest.raises(ValueError, match=needle):
        D.from_tensors(kw["x_train"], kw["y_train"], kw["x_test"], kw["y_test"], num_classes=3, **extra)


class _PilDataset:
    """A torchvision-style dataset of (PIL image, label) pairs."""
    classes = ["zero", "one", "two"]

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i].permute(1, 2, 0).numpy()), int(self.y[i])


def test_from_dataset_equals_from_tensors():
    x, y, xt, yt = _images(60), torch.arange(60) % 3, _images(9, seed=2), torch.arange(9) % 3
    a = D.DataBundle.from_dataset(_PilDataset(x, y), _PilDataset(xt, yt))
    b = D.from_tensors(x, y, xt, yt, classes=_PilDataset.classes)
    assert a.classes == _PilDataset.classes
    for k in ("x_train", "y_train", "x_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    tensors = [(x[i].float() / 255, int(y[i])) for i in range(60)]   # ToTensor-style items
    c = D.from_dataset(tensors, [(xt[i].float() / 255, int(yt[i])) for i in range(9)])
    assert torch.equal(c.x_train, b.x_train)
    with pytest.raises(ValueError, match="train dataset is empty"):
        D.from_dataset([], tensors)


def test_unreachable_download_fails_fast_and_names_the_manual_route(tmp_path, monkeypatch):
    src = W.SOURCES["cifar100"]
    dead = W.WebFile("http://127.0.0.1:9/cifar-100-python.tar.gz", src.files[0].filename, src.files[0].md5)
    monkeypatch.setitem(W.SOURCES, "cifar100", W.WebSource("cifar100", (dead,), src.convert))
    t0 = time.perf_counter()
    with pytest.raises(D.DataError) as err:
        D.get_data("cifar100", root=tmp_path)
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "cannot be reached" in msg and "cifar-100-python.tar.gz" in msg and src.files[0].md5 in msg
    assert str(tmp_path / "downloads") in msg
    assert not (tmp_path / "cifar100.pt").exists()


def test_placed_archive_with_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(D.DataError, match="checksum mismatch .* expected md5 eb9058c3"):
        D.load_raw("cifar100", root=tmp_path)
    assert not (tmp_path / "cifar100.pt").exists()


def _fake_cifar100(n_train=6, n_test=4) -> bytes:
    """A miniature archive in the real layout (pickled dicts of data rows and fine/coarse labels)."""
    def part(n, seed):
        rng = np.random.default_rng(seed)
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                "coarse_labels": [k % 20 for k in range(n)]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in (("train", part(n_train, 0)), ("test", part(n_test, 1))):
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_placed_archive_is_converted_and_cached(tmp_path, monkeypatch):
    blob = _fake_cifar100()
    md5 = hashlib.md5(blob).hexdigest()
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "cifar-100-python.tar.gz").write_bytes(blob)
    for name in ("cifar100", "cifar100_coarse"):
        src = W.SOURCES[name]
        f = W.WebFile(src.files[0].url, src.files[0].filename, md5)
        monkeypatch.setitem(W.SOURCES, name, W.WebSource(name, (f,), src.convert))
        monkeypatch.setitem(data_catalog._INFO, name, {**data_catalog._INFO[name], "train_size": 6, "test_size": 4})
    fine = D.get_data("cifar100", root=tmp_path, val_fraction=0)
    assert fine.num_classes == 100 and fine.classes[:2] == ["apple", "aquarium_fish"]
    raw = D.load_raw("cifar100", root=tmp_path)  # from the cache now
    assert (tmp_path / "cifar100.pt").exists() and raw["y_train"].tolist() == list(range(6))
    expected = np.frombuffer(pickle.loads(tarfile.open(fileobj=io.BytesIO(blob)).extractfile(
        "cifar-100-python/train").read())["data"].tobytes(), dtype=np.uint8).reshape(6, 3, 32, 32)
    assert torch.equal(raw["x_train"], torch.from_numpy(expected.copy()))
    coarse = D.get_data("cifar100_coarse", root=tmp_path, val_fraction=0)
    assert coarse.num_classes == 20 and coarse.y_train.tolist() == [k % 20 for k in range(6)]


def test_smoke_distillation_on_user_tensors(toy_cifar):
    d = toy_cifar
    data = D.DataBundle.from_tensors(torch.cat([d.x_train, d.x_val]), torch.cat([d.y_train, d.y_val]), d.x_test,
                                     d.y_test, name="mine")
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, device="cpu", precision="fp32")
    teacher = build_model("vgg8", width=0.25, num_classes=data.num_classes, in_channels=data.shape[0])
    fit(teacher, data, cfg, progress=False)
    student = build_model("vgg8", width=0.125, num_classes=data.num_classes)
    res = distill(student, teacher, data, cfg.replace(augment="crop_flip"), temperature=4.0, progress=False)
    assert res.config["teacher_outputs"].startswith("plan cache")
    kd = res.history["train_loss_kd"]
    assert kd.iloc[-1] < kd.iloc[0]  # the student moves towards the teacher on the user's data
    ev = evaluate(student, data, "test", device="cpu")
    assert ev.n == len(d.y_test) and 0 <= ev.accuracy <= 1
