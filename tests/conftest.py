"""Shared test fixtures: tiny fake datasets in the real file formats."""

import gzip
import os
import pathlib
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from edgecnn import data as data_lib
from edgecnn import train as train_lib


def write_idx(path: pathlib.Path, array: np.ndarray, *, gz: bool = True) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(raw)
  else:
    path.write_bytes(raw)


def write_mnist_like(directory: pathlib.Path, n_train=50, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {
      "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
      "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
      "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
      "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
  }
  for name, a in arrays.items():
    write_idx(directory / name, a.astype(np.uint8))
  return arrays


def cifar_records(n, seed):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 10).astype(np.uint8)
  planes = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
  return labels, planes


def write_cifar_bin(directory: pathlib.Path, per_batch=4):
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)]
                           + ["test_batch.bin"]):
    labels, planes = cifar_records(per_batch, i)
    records = np.concatenate([labels[:, None], planes], axis=1)
    (directory / name).write_bytes(records.tobytes())
    out[name] = (labels, planes)
  return out


def write_cifar_python(directory: pathlib.Path, per_batch=3):
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)]
                           + ["test_batch"]):
    labels, planes = cifar_records(per_batch, 100 + i)
    with open(directory / name, "wb") as f:
      pickle.dump({b"data": planes, b"labels": list(map(int, labels))}, f)
    out[name] = (labels, planes)
  return out


def fake_dataset(name="fashion_mnist", n_train=60, n_test=20, seed=0):
  """An in-memory Dataset with learnable structure (class = bright block)."""
  info = data_lib.dataset_info(name)
  rng = np.random.default_rng(seed)

  def make(n):
    y = np.arange(n) % info.num_classes
    x = rng.integers(0, 40, (n, *info.image_shape)).astype(np.uint8)
    h = info.image_shape[0]
    for i, c in enumerate(y):
      row = (c // 5) * (h // 2)
      col = (c % 5) * (h // 5)
      x[i, row:row + h // 2, col:col + h // 5, :] = 255
    return x, y.astype(np.int64)

  x_tr, y_tr = make(n_train)
  x_te, y_te = make(n_test)
  return data_lib.Dataset(info, x_tr, y_tr, x_te, y_te, "fake")


@pytest.fixture(autouse=True)
def _fresh_keras():
  keras.utils.set_random_seed(0)
  yield
  keras.backend.clear_session()


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
  """Hide /usr/share/datasets so tests see only the files they write."""
  monkeypatch.setattr(data_lib, "DEBIAN_ROOT", tmp_path / "no-debian")
  monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)


def save_tiny_cloud(directory, dataset_name="fashion_mnist"):
  """Saves an untrained tiny CloudCNN (24x24x1 crops, compact preset, payload
  for m=3) the way train_cloud does, and returns the Keras model."""
  from edgecnn import cloud_model
  from edgecnn import models
  model = models.build_cloud_cnn((24, 24, 1), preset="compact", seed=0)
  cloud_model.save_cloud(model, {"input_shape": [24, 24, 1], "num_classes": 10,
                                 "preset": "compact", "seed": 0},
                         directory, shared=(3,))
  cloud_model.save_dataset_info(directory, data_lib.dataset_info(dataset_name))
  return model


@pytest.fixture(scope="module")
def tiny_cloud(tmp_path_factory):
  """A directory with fake Fashion-MNIST IDX files (data/) and an untrained
  tiny CloudCNN saved like train_cloud does (cloud/)."""
  root = tmp_path_factory.mktemp("tiny")
  write_mnist_like(root / "data" / "fashion-mnist", n_train=60, n_test=10)
  save_tiny_cloud(root / "cloud")
  (root / "cloud" / "train_result.json").write_text("{}")
  return root


def scripted_trainer(vals):
  """A trainer whose models have scripted validation accuracies: the k-th
  model it trains scores vals[k] with its ``validator`` (gate tests)."""
  calls = iter(vals)
  scores = {}

  def trainer(model, dataset, split, config, **kw):
    result = train_lib.train_and_evaluate(model, dataset, split, config, **kw)
    scores[id(model)] = result.best_val_accuracy = next(calls)
    trainer.splits.append(split)
    return result

  trainer.validator = lambda model, images, labels: scores[id(model)]
  trainer.splits = []
  return trainer
