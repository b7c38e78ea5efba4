"""Datasets, the 9:1 split, nested subsets, tf.data pipelines and crops.

Reference: Sec. 4.1 (Table 1) and Sec. 4.3.1 of Ding et al.

Sources are tried in this order (``load_dataset``):
  1. a directory passed as ``data_dir``, else ``$EDGECNN_DATA_DIR``, holding
     the datasets' original distribution files: IDX ``*-ubyte(.gz)`` for MNIST
     and Fashion-MNIST, the CIFAR-10 binary version (``data_batch_{1..5}.bin``,
     ``test_batch.bin``) or its python version (``data_batch_{1..5}``,
     ``test_batch``). Files may sit in the directory itself or in a
     sub-directory named after the dataset (see ``SUBDIRS``);
  2. Debian's install path ``/usr/share/datasets/<name>`` (package
     ``dataset-fashion-mnist`` provides Fashion-MNIST there);
  3. tensorflow-datasets, which downloads when there is internet (a dataset
     it has not downloaded fails in seconds when its hosts are unreachable).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import pickle
import socket
from typing import Iterable
import urllib.parse

import numpy as np
import tensorflow as tf

# Defined in config.py (no TensorFlow there) and re-exported.
from edgecnn.config import DATA_DIR_ENV, DATASETS, DatasetInfo

DEBIAN_ROOT = pathlib.Path("/usr/share/datasets")

SUBDIRS = {
    "mnist": ("mnist", "MNIST"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST"),
    "cifar10": ("cifar10", "cifar-10-batches-bin", "cifar-10-batches-py",
                "cifar-10"),
}


class DataNotFoundError(FileNotFoundError):
  """No source could provide a dataset."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset in memory: uint8 NHWC images and int64 labels."""
  info: DatasetInfo
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source: str


def dataset_info(name: str) -> DatasetInfo:
  """Returns the DatasetInfo of a dataset name, or a ValueError naming them."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: "
                     f"{sorted(DATASETS)}.")
  return DATASETS[name]


# --- readers of the original file formats -----------------------------------

def _open(path: pathlib.Path) -> bytes:
  with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
    return f.read()


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) of unsigned bytes.

  Raises:
    ValueError: if the header is not an unsigned-byte IDX header or the
      payload size does not match it.
  """
  path = pathlib.Path(path)
  raw = _open(path)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (magic "
                     f"{raw[:4].hex() if raw else 'empty'}; expected 000008xx).")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  offset = 4 + 4 * ndim
  expected = int(np.prod(dims))
  if len(raw) - offset != expected:
    raise ValueError(f"{path}: header says {dims} ({expected} bytes), file has "
                     f"{len(raw) - offset} bytes of data.")
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find(directory: pathlib.Path, stems: Iterable[str]) -> pathlib.Path | None:
  for stem in stems:
    for candidate in (stem, stem + ".gz"):
      p = directory / candidate
      if p.is_file():
        return p
  return None


def _idx_names(split: str, kind: str) -> list[str]:
  # The originals use '-' (train-images-idx3-ubyte); some mirrors use '.'.
  ndim = 3 if kind == "images" else 1
  return [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]


def _load_idx_dir(directory: pathlib.Path):
  paths = {(s, k): _find(directory, _idx_names(s, k))
           for s in ("train", "t10k") for k in ("images", "labels")}
  if any(p is None for p in paths.values()):
    return None
  x_train = read_idx(paths["train", "images"])
  y_train = read_idx(paths["train", "labels"])
  x_test = read_idx(paths["t10k", "images"])
  y_test = read_idx(paths["t10k", "labels"])
  return x_train[..., None], y_train, x_test[..., None], y_test


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 binary batch: records of 1 label + 3072 pixel bytes."""
  path = pathlib.Path(path)
  raw = np.frombuffer(_open(path), np.uint8)
  if raw.size == 0 or raw.size % 3073:
    raise ValueError(f"{path}: {raw.size} bytes is not a whole number of "
                     "CIFAR-10 records (3073 bytes each).")
  records = raw.reshape(-1, 3073)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), records[:, 0].copy()


def read_cifar_python(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 python-version batch (a pickle the user provided)."""
  with open(path, "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  data = np.asarray(batch[b"data"], np.uint8)
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), np.asarray(batch[b"labels"], np.uint8)


def _load_cifar_dir(directory: pathlib.Path):
  for suffix, reader in ((".bin", read_cifar_bin), ("", read_cifar_python)):
    train = [_find(directory, [f"data_batch_{i}{suffix}"]) for i in range(1, 6)]
    test = _find(directory, [f"test_batch{suffix}"])
    if all(train) and test:
      parts = [reader(p) for p in train]
      x_test, y_test = reader(test)
      return (np.concatenate([p[0] for p in parts]),
              np.concatenate([p[1] for p in parts]), x_test, y_test)
  return None


def _load_from_dir(name: str, directory: pathlib.Path):
  loader = _load_cifar_dir if name == "cifar10" else _load_idx_dir
  for d in [directory] + [directory / s for s in SUBDIRS[name]]:
    if d.is_dir():
      arrays = loader(d)
      if arrays is not None:
        return arrays, str(d)
  return None


# Seconds to wait for a TCP connection to a download host before calling the
# machine offline. tfds itself retries each file ten times with back-off
# (3-4 minutes before it gives up offline).
TFDS_PROBE_TIMEOUT_S = 5.0


def _reachable(host: str, port: int) -> bool:
  try:
    with socket.create_connection((host, port), timeout=TFDS_PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def _load_tfds(name: str):
  import tensorflow_datasets as tfds  # imported lazily: slow and optional
  builder = tfds.builder(name)
  if not builder.is_prepared():
    # A download is needed: fail at once if its hosts cannot be reached.
    urls = [urllib.parse.urlsplit(u) for u in builder.url_infos or ()]
    hosts = sorted({(u.hostname, u.port or (443 if u.scheme == "https" else 80))
                    for u in urls if u.hostname})
    unreachable = [f"{h}:{port}" for h, port in hosts
                   if not _reachable(h, port)]
    if unreachable:
      raise ConnectionError(
          f"not downloaded to {builder.data_dir}, and its download hosts "
          f"{unreachable} cannot be reached (no internet?)")
  train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"],
                                        batch_size=-1, as_supervised=True))
  return (train[0], train[1], test[0], test[1]), f"tensorflow-datasets:{name}"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 use_tfds: bool = True) -> Dataset:
  """Loads a dataset from local files, Debian's path or tensorflow-datasets.

  Args:
    name: "mnist", "fashion_mnist" or "cifar10".
    data_dir: directory with the original distribution files; defaults to
      $EDGECNN_DATA_DIR.
    use_tfds: whether to fall back to tensorflow-datasets (needs internet on
      first use).

  Returns:
    A Dataset with uint8 NHWC images and int64 labels.

  Raises:
    ValueError: for an unknown name or files whose shapes are wrong.
    DataNotFoundError: if no source provides the dataset.
  """
  info = dataset_info(name)
  tried = []
  directory = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
  found = None
  for d in ([pathlib.Path(directory)] if directory else []) + [
      DEBIAN_ROOT / s for s in SUBDIRS[name]]:
    tried.append(str(d))
    found = _load_from_dir(name, d)
    if found:
      break
  if found is None and use_tfds:
    try:
      found = _load_tfds(name)
    except Exception as e:  # tfds raises many types when offline.
      tried.append(f"tensorflow-datasets ({type(e).__name__}: {str(e)[:200]})")
  if found is None:
    raise DataNotFoundError(
        f"Could not load dataset {name!r}. Tried: {tried}. Provide it in one "
        f"of three ways: (1) put the original files (IDX *-ubyte.gz for MNIST "
        f"and Fashion-MNIST; CIFAR-10 data_batch_*.bin/test_batch.bin) in a "
        f"directory and pass it as data_dir or set ${DATA_DIR_ENV}; (2) on "
        f"Debian, `apt-get install dataset-fashion-mnist` (files in "
        f"{DEBIAN_ROOT}/fashion-mnist); (3) with internet, let "
        f"tensorflow-datasets download it.")
  (x_train, y_train, x_test, y_test), source = found
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    if x.shape[1:] != info.image_shape or len(x) != len(y):
      raise ValueError(f"{name} {split} from {source}: images {x.shape}, labels "
                       f"{y.shape}; expected (n, {info.image_shape}) and (n,).")
  return Dataset(info, np.asarray(x_train, np.uint8),
                 np.asarray(y_train, np.int64), np.asarray(x_test, np.uint8),
                 np.asarray(y_test, np.int64), source)


# --- splits and subsets -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into the training set: a training part and a validation part."""
  train: np.ndarray
  val: np.ndarray


def subset_order(num_available: int, *, seed: int,
                 labels: np.ndarray | None = None,
                 balanced_first: int = 0) -> np.ndarray:
  """The seeded order in which a sweep takes training images.

  By default a random permutation. With ``balanced_first`` = k > 0 (and the
  ``labels`` of the training set), the first k entries take the classes in
  turn: round r holds the r-th image of every class in the random
  permutation, in a freshly shuffled class order, until k images are taken
  (the last round may be cut short). The class that ends a round goes
  through every class, in a random order, before one ends a round again: with
  ten classes and the 9:1 split (every 10th image validates) the validation
  images spread over the classes too, so at N=120 10-11 images of each class
  train and 1-2 validate. The rest of the order is the random
  permutation without them. So a subset of N >= k images holds a
  class-balanced first k (an initialisation phase whose few labelled images
  an operator picked per class) and random images after them (the uploads
  of the update phases, whose labels nobody knows beforehand). The paper
  does not say how its N images were chosen (Sec. 4.3.1).

  Args:
    num_available: size of the full training set.
    seed: seed of the order.
    labels: class of every training image; needed for ``balanced_first``.
    balanced_first: how many leading entries are class-balanced.

  Returns:
    A permutation of range(num_available).
  """
  order = np.random.default_rng(seed).permutation(num_available)
  if not balanced_first:
    return order
  if not 0 < balanced_first <= num_available:
    raise ValueError(f"`balanced_first` must be in 0..{num_available}. "
                     f"Received: balanced_first={balanced_first}")
  if labels is None or len(labels) != num_available:
    raise ValueError(
        "A class-balanced start needs the class of every training image: "
        f"`labels` of length {num_available}. Received: "
        f"{'None' if labels is None else f'{len(labels)} labels'}")
  labels = np.asarray(labels)
  classes = np.unique(labels)
  # Each class's images in the order of the random permutation.
  queues = [order[labels[order] == c] for c in classes]
  rng = np.random.default_rng([seed, 1])  # the rounds' class orders
  closers: list[int] = []  # which class ends each round
  first: list[int] = []
  for r in range(max(len(q) for q in queues)):
    if not closers:
      closers = list(rng.permutation(len(classes)))
    closer = closers.pop()
    turn = [k for k in rng.permutation(len(classes)) if k != closer]
    first.extend(queues[k][r] for k in turn + [closer] if r < len(queues[k]))
    if len(first) >= balanced_first:
      break
  first_arr = np.asarray(first[:balanced_first], dtype=order.dtype)
  return np.concatenate([first_arr, order[~np.isin(order, first_arr)]])


def subset_split(num_available: int, num_images: int | None = None, *,
                 seed: int, val_fraction: float = 0.1,
                 labels: np.ndarray | None = None,
                 balanced_first: int = 0) -> Split:
  """Chooses N training images and splits them 9:1 (Sec. 4.3.1).

  The subset of N images is the first N entries of ``subset_order`` (a
  seeded permutation, or one whose first ``balanced_first`` entries are
  class-balanced), so subsets are nested (the N=240 subset contains the
  N=120 one and its validation images stay validation images). Within the
  subset, every position i with floor((i+1)f) > floor(i f) (every 10th for
  f=0.1) is a validation image.

  Args:
    num_available: size of the full training set.
    num_images: N, the number of training images; None for all of them.
    seed: seed of the order.
    val_fraction: share of the subset used for validation (paper: 0.1).
    labels: class of every training image (for ``balanced_first``).
    balanced_first: see ``subset_order``; 0 (random) by default.

  Returns:
    A Split of disjoint index arrays.
  """
  n = num_available if num_images is None else num_images
  if not 1 <= n <= num_available:
    raise ValueError(f"`num_images` must be in 1..{num_available}. Received: "
                     f"num_images={num_images}")
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"`val_fraction` must be in (0, 1). Received: "
                     f"val_fraction={val_fraction}")
  order = subset_order(num_available, seed=seed, labels=labels,
                       balanced_first=balanced_first)[:n]
  pos = np.arange(n)
  is_val = np.floor((pos + 1) * val_fraction) > np.floor(pos * val_fraction)
  return Split(train=order[~is_val], val=order[is_val])


# --- preprocessing, crops and pipelines ---------------------------------------

def preprocess(images) -> tf.Tensor:
  """uint8 images (N, H, W, C) -> float32 in [0, 1]. Used by training,
  evaluation and serving alike."""
  return tf.cast(images, tf.float32) / 255.0


def _check_crop(image_shape, crop_size: int) -> None:
  h, w = image_shape[0], image_shape[1]
  if not 1 <= crop_size <= min(h, w):
    raise ValueError(f"`crop_size` must be in 1..{min(h, w)} for images of "
                     f"{h}x{w}. Received: crop_size={crop_size}")


def center_crop(images, crop_size: int) -> tf.Tensor:
  """Centre crop of a batch (N, H, W, C)."""
  _check_crop(images.shape[1:], crop_size)
  h, w = images.shape[1], images.shape[2]
  top, left = (h - crop_size) // 2, (w - crop_size) // 2
  return images[:, top:top + crop_size, left:left + crop_size, :]


def ten_crop(images, crop_size: int, *, flip: bool = True) -> tf.Tensor:
  """Standard 10-crop: 4 corners + centre, and the same of the mirror image.

  Args:
    images: batch (N, H, W, C).
    crop_size: side of the square crops.
    flip: include the horizontal mirrors (10 crops); False gives the 5 crops
      of the image itself, for classes a mirror changes (digits).

  Returns:
    A tensor (K, N, crop, crop, C) with K = 10 or 5, in the order
    top-left, top-right, bottom-left, bottom-right, centre (then mirrored).
  """
  images = tf.convert_to_tensor(images)
  _check_crop(images.shape[1:], crop_size)
  h, w = images.shape[1], images.shape[2]
  c = crop_size
  offsets = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c),
             ((h - c) // 2, (w - c) // 2)]
  sources = [images, tf.reverse(images, axis=[2])] if flip else [images]
  return tf.stack([src[:, t:t + c, l:l + c, :] for src in sources
                   for t, l in offsets])


def train_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int,
                   crop_size: int, flip: bool, seed: int) -> tf.data.Dataset:
  """Training input: cache, seeded shuffle, random crop (+flip), batch.

  Args:
    x: uint8 images (N, H, W, C).
    y: integer labels (N,).
    batch_size: mini-batch size (paper: 32).
    crop_size: side of the random crops (the model's input size).
    flip: random horizontal flips (only where a mirror keeps the class).
    seed: seed of the shuffle and of the augmentation.
  """
  _check_crop(x.shape[1:], crop_size)
  channels = x.shape[-1]
  ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
  ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
  # One pair of stateless seeds per image from a seeded random stream, so the
  # crops do not depend on the order parallel map calls run in.
  seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
  ds = tf.data.Dataset.zip((ds, seeds.batch(4)))

  def augment(example, seed_ints):
    image, label = example
    crop_seed, flip_seed = seed_ints[:2], seed_ints[2:]
    image = tf.image.stateless_random_crop(
        preprocess(image), [crop_size, crop_size, channels], seed=crop_seed)
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image, label

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def skip_passes(ds: tf.data.Dataset, passes: int) -> None:
  """Advances a train_pipeline's randomness by ``passes`` passes.

  The shuffle and the crop seeds are redrawn each time an iterator is made,
  from the pipeline's seed and a count of iterators made so far; making one
  and reading one batch counts as a pass without reading the rest. So a
  resumed run's fresh pipeline gives the batches the uninterrupted run would
  have had.
  """
  if passes < 0:
    raise ValueError(f"`passes` must be >= 0. Received: {passes}")
  for _ in range(passes):
    next(iter(ds))


def eval_pipeline(x: np.ndarray, y: np.ndarray | None = None, *,
                  batch_size: int = 256,
                  crop_size: int | None = None) -> tf.data.Dataset:
  """Evaluation input: centre crop (if crop_size), no shuffle, cached."""
  if crop_size is not None:
    _check_crop(x.shape[1:], crop_size)
  ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))

  def prep(images, labels=None):
    images = preprocess(images)
    if crop_size is not None:
      images = center_crop(images, crop_size)
    return images if labels is None else (images, labels)

  ds = ds.batch(batch_size).map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.cache().prefetch(tf.data.AUTOTUNE)
