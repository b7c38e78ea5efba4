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
