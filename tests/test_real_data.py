"""Real datasets from their original files (opt-in: pytest -m slow).

Set $EDGECNN_DATA_DIR to a directory with MNIST and CIFAR-10 (on this
project's machines /work/shared/datasets); Fashion-MNIST comes from Debian's
dataset-fashion-mnist package or the same directory.
"""

import os

import numpy as np
import pytest

from edgecnn import data as data_lib

pytestmark = pytest.mark.slow

SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
         "cifar10": (50000, 10000)}
FIRST_TRAIN_LABELS = {"fashion_mnist": [9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
                      "cifar10": [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_real_dataset_has_published_sizes(name):
  data_dir = os.environ.get(data_lib.DATA_DIR_ENV) or (
      "/work/shared/datasets" if os.path.isdir("/work/shared/datasets") else None)
  try:
    ds = data_lib.load_dataset(name, data_dir, use_tfds=False)
  except data_lib.DataNotFoundError as e:
    pytest.skip(str(e))
  n_train, n_test = SIZES[name]
  assert ds.x_train.shape == (n_train, *ds.info.image_shape)
  assert ds.x_test.shape == (n_test, *ds.info.image_shape)
  assert len(ds.y_train) == n_train and len(ds.y_test) == n_test
  assert set(np.unique(ds.y_train)) == set(range(10))
  if name in FIRST_TRAIN_LABELS:
    assert ds.y_train[:10].tolist() == FIRST_TRAIN_LABELS[name]
  split = data_lib.subset_split(n_train, None, seed=0)
  assert (len(split.train), len(split.val)) == (n_train * 9 // 10, n_train // 10)


def test_trunk_cache_is_bit_identical_on_the_committed_cloud():
  """evaluate.TrunkCache against the whole model, on the 10,000 real
  Fashion-MNIST test images and the committed compact CloudCNN (seed 0),
  EdgeCNN1-3/5/10 after 3 epochs on N=120. Prints the time of each path."""
  import time
  from edgecnn import cloud_model
  from edgecnn import evaluate as eval_lib
  from edgecnn import models
  from edgecnn import train as train_lib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  directory = os.path.join(root, "results", "models",
                           "fashion_mnist-compact-seed0")
  try:
    ds = data_lib.load_dataset("fashion_mnist", os.environ.get(
        data_lib.DATA_DIR_ENV), use_tfds=False)
  except data_lib.DataNotFoundError as e:
    pytest.skip(str(e))
  cloud = cloud_model.load_cloud(directory)
  crop, flip = ds.info.default_crop, ds.info.flip
  cache = eval_lib.TrunkCache()
  split = data_lib.subset_split(len(ds.x_train), 120, seed=0)
  for m in (3, 5, 10):
    edge = models.build_edge_cnn(cloud, m, seed=0)
    train_lib.train_and_evaluate(edge, ds, split,
                                 train_lib.TrainConfig(max_epochs=3), seed=0,
                                 evaluate_test=False)
    start = time.perf_counter()
    whole = {mode: eval_lib.predict_probs(edge, ds.x_test, crop_size=crop,
                                          mode=mode, flip=flip)
             for mode in eval_lib.CROP_MODES}
    times = [time.perf_counter() - start]
    for _ in range(2):  # the miss that fills the entry, then a hit
      start = time.perf_counter()
      cached = cache.predict_probs(edge, ds.x_test, crop_size=crop, flip=flip)
      times.append(time.perf_counter() - start)
    for mode in eval_lib.CROP_MODES:
      np.testing.assert_array_equal(cached[mode], whole[mode])
    print(f"m={m}: whole {times[0]:.1f} s, cached miss {times[1]:.1f} s, "
          f"hit {times[2]:.1f} s; 10-crop accuracy "
          f"{eval_lib.accuracy(whole['ten_crop'], ds.y_test):.4f}")
  assert (cache.misses, cache.hits) == (3, 3)
