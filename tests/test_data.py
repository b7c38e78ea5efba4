import numpy as np
import pytest
import tensorflow as tf

from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from tests.conftest import (write_cifar_bin, write_cifar_python, write_idx,
                            write_mnist_like)


@pytest.mark.parametrize("name,subdir", [("mnist", "mnist"),
                                         ("fashion_mnist", "fashion-mnist")])
def test_idx_loader_reads_written_files(tmp_path, no_debian, name, subdir):
  arrays = write_mnist_like(tmp_path / subdir)
  ds = data_lib.load_dataset(name, tmp_path, use_tfds=False)
  assert ds.x_train.shape == (50, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
  np.testing.assert_array_equal(ds.x_train[..., 0],
                                arrays["train-images-idx3-ubyte.gz"])
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
  assert ds.source == str(tmp_path / subdir)


def test_env_var_is_a_source(tmp_path, no_debian, monkeypatch):
  write_mnist_like(tmp_path)
  monkeypatch.setenv(data_lib.DATA_DIR_ENV, str(tmp_path))
  assert data_lib.load_dataset("mnist", use_tfds=False).source == str(tmp_path)


def test_debian_path_is_a_source(tmp_path, monkeypatch):
  monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(data_lib, "DEBIAN_ROOT", tmp_path)
  write_mnist_like(tmp_path / "fashion-mnist")
  ds = data_lib.load_dataset("fashion_mnist", use_tfds=False)
  assert ds.source == str(tmp_path / "fashion-mnist")


def test_uncompressed_idx_and_malformed_idx(tmp_path):
  a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
  write_idx(tmp_path / "x", a, gz=False)
  np.testing.assert_array_equal(data_lib.read_idx(tmp_path / "x"), a)
  (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    data_lib.read_idx(tmp_path / "bad")
  write_idx(tmp_path / "short", a, gz=False)
  (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
  with pytest.raises(ValueError, match="header says"):
    data_lib.read_idx(tmp_path / "short")


def test_cifar_binary_loader(tmp_path, no_debian):
  written = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
  ds = data_lib.load_dataset("cifar10", tmp_path, use_tfds=False)
  assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  labels, planes = written["data_batch_1.bin"]
  np.testing.assert_array_equal(ds.y_train[:4], labels)
  # record layout: R plane, G plane, B plane, each 32x32 row-major.
  np.testing.assert_array_equal(ds.x_train[0, 0, :, 0], planes[0, :32])
  np.testing.assert_array_equal(ds.x_train[0, 0, :, 1], planes[0, 1024:1056])
  np.testing.assert_array_equal(ds.x_train[0, 1, 0, 2], planes[0, 2048 + 32])


def test_cifar_python_loader(tmp_path, no_debian):
  written = write_cifar_python(tmp_path / "cifar-10-batches-py")
  ds = data_lib.load_dataset("cifar10", tmp_path, use_tfds=False)
  assert ds.x_train.shape == (15, 32, 32, 3)
  labels, planes = written["test_batch"]
  np.testing.assert_array_equal(ds.y_test, labels)
  np.testing.assert_array_equal(ds.x_test[1, 0, :, 0], planes[1, :32])


def test_cifar_wrong_size_is_named(tmp_path):
  (tmp_path / "b.bin").write_bytes(b"\x00" * 3000)
  with pytest.raises(ValueError, match="3073"):
    data_lib.read_cifar_bin(tmp_path / "b.bin")


def test_missing_data_error_names_three_ways(tmp_path, no_debian, monkeypatch):
  def offline(name):
    raise ConnectionError("no internet")
  monkeypatch.setattr(data_lib, "_load_tfds", offline)
  with pytest.raises(data_lib.DataNotFoundError) as e:
    data_lib.load_dataset("mnist", tmp_path / "empty")
  msg = str(e.value)
  assert "EDGECNN_DATA_DIR" in msg and "dataset-fashion-mnist" in msg
  assert "tensorflow-datasets" in msg and "no internet" in msg
  assert str(tmp_path / "empty") in msg


def test_tfds_offline_fails_at_once_naming_the_download_hosts(monkeypatch):
  import tensorflow_datasets as tfds
  # url_infos reads tfds's checksum files through importlib_resources, which
  # tfds 4.9 does not declare (setup.py does): without it, ModuleNotFoundError.
  assert any("mnist" in url for url in tfds.builder("mnist").url_infos)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared",
                      lambda self: False)
  probed = []
  monkeypatch.setattr(data_lib, "_reachable",
                      lambda host, port: probed.append((host, port)) or False)
  def no_download(*args, **kwargs):
    raise AssertionError("tfds.load called although offline")
  monkeypatch.setattr(tfds, "load", no_download)
  with pytest.raises(ConnectionError, match=(
      r"not downloaded to .*mnist.*download hosts "
      r"\['storage.googleapis.com:443'\] cannot be reached")):
    data_lib._load_tfds("mnist")
  assert probed == [("storage.googleapis.com", 443)]
  probed.clear()
  with pytest.raises(ConnectionError, match=(
      r"\['fashion-mnist.s3-website.eu-central-1.amazonaws.com:80'\]")):
    data_lib._load_tfds("fashion_mnist")
  assert len(probed) == 1


def test_unknown_dataset():
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*cifar10"):
    data_lib.load_dataset("imagenet")


def test_subset_split_deterministic_disjoint_nested():
  a = data_lib.subset_split(1000, 240, seed=3)
  b = data_lib.subset_split(1000, 240, seed=3)
  np.testing.assert_array_equal(a.train, b.train)
  np.testing.assert_array_equal(a.val, b.val)
  assert len(a.train) == 216 and len(a.val) == 24
  assert not set(a.train) & set(a.val)
  small = data_lib.subset_split(1000, 120, seed=3)
  assert set(small.train) <= set(a.train) and set(small.val) <= set(a.val)
  other = data_lib.subset_split(1000, 240, seed=4)
  assert set(other.train) != set(a.train)
  full = data_lib.subset_split(1000, None, seed=3)
  assert len(full.train) == 900 and len(full.val) == 100
  assert set(full.train) | set(full.val) == set(range(1000))


def test_subset_order_by_default_is_the_seeded_permutation():
  # The committed grids were drawn this way; a default that changed would
  # train other images under the same row keys.
  np.testing.assert_array_equal(data_lib.subset_order(1000, seed=3),
                                np.random.default_rng(3).permutation(1000))
  np.testing.assert_array_equal(
      data_lib.subset_split(1000, 240, seed=3).train,
      data_lib.subset_split(1000, 240, seed=3, labels=np.zeros(1000, int),
                            balanced_first=0).train)


def test_a_balanced_start_takes_the_classes_in_turn_then_random_images():
  labels = np.random.default_rng(0).permutation(np.arange(1000) % 10)
  labels[labels == 9] = 8  # 9 classes: 200 of class 8, none of class 9
  labels[np.flatnonzero(labels == 0)[3:]] = 1  # 3 of class 0
  order = data_lib.subset_order(1000, seed=3, labels=labels,
                                balanced_first=120)
  assert sorted(order) == list(range(1000))
  counts = np.bincount(labels[order[:120]], minlength=10)
  # Class 0 runs out after 3 rounds; the other 8 share the rest evenly.
  assert counts[0] == 3 and counts[9] == 0
  assert set(counts[1:9]) <= {14, 15} and counts.sum() == 120
  # Every full round holds each class once.
  for r in range(3):
    assert sorted(labels[order[9 * r:9 * r + 9]]) == list(range(9))
  # After the balanced start: the random order, without what it took.
  plain = data_lib.subset_order(1000, seed=3)
  np.testing.assert_array_equal(order[120:],
                                plain[~np.isin(plain, order[:120])])
  # Nested: N=240 holds N=120's training and validation images.
  small = data_lib.subset_split(1000, 120, seed=3, labels=labels,
                                balanced_first=120)
  large = data_lib.subset_split(1000, 240, seed=3, labels=labels,
                                balanced_first=120)
  assert set(small.train) <= set(large.train)
  assert set(small.val) <= set(large.val)
  # Ten even classes: the 9:1 split leaves 10-11 of each to train on (a
  # random 120 of Fashion-MNIST leaves 3-18).
  even = np.random.default_rng(1).permutation(np.arange(1000) % 10)
  for seed in range(5):
    split = data_lib.subset_split(1000, 120, seed=seed, labels=even,
                                  balanced_first=120)
    counts = np.bincount(even[split.train], minlength=10)
    assert counts.min() >= 10 and counts.max() <= 11, counts
    assert np.bincount(even[np.concatenate([split.train, split.val])],
                       minlength=10).tolist() == [12] * 10


@pytest.mark.parametrize("labels,first,match", [
    (None, 120, "needs the class of every training image.*Received: None"),
    (np.zeros(999, int), 120, "length 1000. Received: 999 labels"),
    (np.zeros(1000, int), 1001, r"balanced_first. must be in 0..1000")])
def test_a_balanced_start_refuses_what_it_cannot_balance(labels, first, match):
  with pytest.raises(ValueError, match=match):
    data_lib.subset_order(1000, seed=0, labels=labels, balanced_first=first)


@pytest.mark.parametrize("n", [0, 1001])
def test_subset_split_bad_n(n):
  with pytest.raises(ValueError, match="1..1000"):
    data_lib.subset_split(1000, n, seed=0)


def test_ten_crop_shape_and_content():
  x = tf.reshape(tf.range(2 * 6 * 6, dtype=tf.float32), (2, 6, 6, 1))
  crops = data_lib.ten_crop(x, 4)
  assert crops.shape == (10, 2, 4, 4, 1)
  np.testing.assert_array_equal(crops[0], x[:, :4, :4])
  np.testing.assert_array_equal(crops[3], x[:, 2:, 2:])
  np.testing.assert_array_equal(crops[4], x[:, 1:5, 1:5])
  np.testing.assert_array_equal(crops[5], tf.reverse(x, [2])[:, :4, :4])
  assert data_lib.ten_crop(x, 4, flip=False).shape == (5, 2, 4, 4, 1)
  with pytest.raises(ValueError, match="crop_size"):
    data_lib.ten_crop(x, 7)




def test_ten_crop_prediction_is_mean_of_crop_softmaxes():
  import keras
  inp = keras.Input((4, 4, 1))
  out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp))
  model = keras.Model(inp, out)
  images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 1)).astype(np.uint8)
  got = eval_lib.predict_probs(model, images, crop_size=4, mode="ten_crop")
  crops = data_lib.ten_crop(data_lib.preprocess(images), 4).numpy()
  want = np.mean([model.predict(c, verbose=0) for c in crops], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  center = eval_lib.predict_probs(model, images, crop_size=4, mode="center")
  np.testing.assert_allclose(center, model.predict(crops[4], verbose=0), rtol=1e-5)


def test_train_pipeline_shapes_and_seeded_determinism():
  x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1)).astype(np.uint8)
  y = np.arange(10)

  def first_epoch(seed):
    ds = data_lib.train_pipeline(x, y, batch_size=4, crop_size=6, flip=True,
                                 seed=seed)
    return [(a.numpy(), b.numpy()) for a, b in ds]

  a, b = first_epoch(1), first_epoch(1)
  assert [xb.shape for xb, _ in a] == [(4, 6, 6, 1), (4, 6, 6, 1), (2, 6, 6, 1)]
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert a[0][0].max() <= 1.0 and a[0][0].dtype == np.float32
  assert sorted(np.concatenate([yb for _, yb in a])) == list(range(10))


def test_skip_passes_brings_a_fresh_pipeline_to_a_later_pass():
  x = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1)).astype(np.uint8)
  y = np.arange(12)

  def pipeline():
    return data_lib.train_pipeline(x, y, batch_size=5, crop_size=6, flip=True,
                                   seed=4)

  def one_pass(ds):
    batches = list(ds)
    return (np.concatenate([a.numpy() for a, _ in batches]),
            np.concatenate([b.numpy() for _, b in batches]))

  running = pipeline()
  passes = [one_pass(running) for _ in range(4)]
  # Each pass is a new shuffle and new crops, so replaying pass 1 as pass 3
  # (what a resumed run did before skip_passes) would be visible.
  assert not np.array_equal(passes[0][1], passes[2][1])
  resumed = pipeline()
  data_lib.skip_passes(resumed, 2)
  for want in passes[2:]:
    got = one_pass(resumed)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  with pytest.raises(ValueError, match="Received: -1"):
    data_lib.skip_passes(resumed, -1)


def test_eval_pipeline_center_crops_in_order():
  x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
  batches = list(data_lib.eval_pipeline(x, np.arange(5), batch_size=2,
                                        crop_size=6))
  got = np.concatenate([b[0].numpy() for b in batches])
  np.testing.assert_allclose(got, x[:, 1:7, 1:7] / 255.0, rtol=1e-6)
