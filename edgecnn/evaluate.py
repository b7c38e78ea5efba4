"""10-crop and centre-crop evaluation (Sec. 4.3.1) and timing helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import platform
import statistics
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from edgecnn import data as data_lib
from edgecnn import models

CROP_MODES = ("ten_crop", "center")
logger = logging.getLogger("edgecnn")


# A test pass longer than this logs a progress line this often (the paper
# preset's CloudCNN takes about 10 min over 10,000 images and 10 crops).
PROGRESS_INTERVAL_S = 60.0


def _crop_chunks(images: np.ndarray, *, crop_size: int, mode: str,
                 flip: bool, chunk: int):
  """Yields (k, crops) for each chunk of images: the chunk's k crops per
  image as one batch (k * n, crop, crop, C), crop-major. Logs progress
  every PROGRESS_INTERVAL_S (the time includes the caller's work on the
  chunks already yielded)."""
  if mode not in CROP_MODES:
    raise ValueError(f"`mode` must be one of {list(CROP_MODES)}. Received: "
                     f"mode={mode!r}")
  begun = last = time.perf_counter()
  for start in range(0, len(images), chunk):
    now = time.perf_counter()
    if start and now - last >= PROGRESS_INTERVAL_S:
      last = now
      rate = start / (now - begun)
      logger.info("test pass (%s): %d of %d images, %.1f images/s, ends in "
                  "~%.0f s", mode, start, len(images), rate,
                  (len(images) - start) / rate)
    x = data_lib.preprocess(images[start:start + chunk])
    if mode == "center":
      yield 1, data_lib.center_crop(x, crop_size)
      continue
    crops = data_lib.ten_crop(x, crop_size, flip=flip)
    k, n = crops.shape[0], crops.shape[1]
    yield k, tf.reshape(crops, [k * n, *crops.shape[2:]])


def _mean_over_crops(probs: np.ndarray, k: int) -> np.ndarray:
  return probs.reshape(k, -1, probs.shape[-1]).mean(axis=0)


def predict_probs(model: keras.Model, images: np.ndarray, *, crop_size: int,
                  mode: str = "ten_crop", flip: bool = True,
                  batch_size: int = 256, chunk: int = 1000) -> np.ndarray:
  """Class probabilities of uint8 images under a crop protocol.

  Args:
    model: a classifier whose input side is ``crop_size``.
    images: uint8 (N, H, W, C).
    crop_size: side of the crops.
    mode: "ten_crop" (mean softmax over the standard crops, see
      data.ten_crop) or "center" (the centre crop alone).
    flip: with "ten_crop", include the mirrored crops (10) or not (5).
    batch_size: forward-pass batch size.
    chunk: images cropped at a time, to bound memory.

  Returns:
    float32 (N, num_classes).
  """
  out = [_mean_over_crops(model.predict(crops, batch_size=batch_size,
                                        verbose=0), k)
         for k, crops in _crop_chunks(images, crop_size=crop_size, mode=mode,
                                      flip=flip, chunk=chunk)]
  return np.concatenate(out).astype(np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of probabilities against integer labels."""
  return float(np.mean(np.argmax(probs, axis=-1) == np.asarray(labels)))


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, *,
             crop_size: int, flip: bool, batch_size: int = 256,
             cache: "TrunkCache | None" = None) -> dict[str, float]:
  """Top-1 accuracy with 10-crop (5-crop without flips) and centre crop.

  With a ``cache``, a model whose layers up to its head pool are all frozen
  (EdgeCNN1) runs only its head on the cached trunk features; any other
  model is evaluated whole.
  """
  if cache is not None:
    probs = cache.predict_probs(model, images, crop_size=crop_size, flip=flip,
                                batch_size=batch_size)
    if probs is not None:
      return {mode: accuracy(p, labels) for mode, p in probs.items()}
  return {
      mode: accuracy(predict_probs(model, images, crop_size=crop_size,
                                   mode=mode, flip=flip,
                                   batch_size=batch_size), labels)
      for mode in CROP_MODES
  }


class TrunkCache:
  """Test-crop features of frozen trunks, shared by the runs that use them.

  EdgeCNN1-m's layers up to its head pool are frozen copies of CloudCNN's
  (Alg. 1, step 3) and the head pool has no weights, so every EdgeCNN1-m of a
  sweep maps a test crop to the same features there. This cache computes those
  features once per trunk and runs only the trained head (dropout, FC, softmax)
  on them, with the same chunks and batches as ``predict_probs``: the same
  operations on the same values. The 10-crop pass over 10,000 test images is
  most of a small-N run, so EdgeCNN1 runs after the first of each m cost little
  more than their training.

  Entries are keyed by the trunk's weights and layer configs, the images'
  bytes and the crop protocol, so a changed trunk or test set is never served
  stale features. Models whose trunk is trainable (EdgeCNN0, CloudCNN), or
  whose features would not fit ``max_bytes``, are left to the whole-model
  path (``predict_probs`` returns None for them).
  """

  def __init__(self, max_bytes: int = 5 * 2**30):
    if max_bytes < 0:
      raise ValueError(f"`max_bytes` must be >= 0. Received: "
                       f"max_bytes={max_bytes}")
    self.max_bytes = int(max_bytes)
    self._entries: dict[str, dict[str, list[tuple[int, np.ndarray]]]] = {}
    self._sizes: dict[str, int] = {}
    self.hits = self.misses = 0

  @property
  def nbytes(self) -> int:
    return sum(self._sizes.values())

  @staticmethod
  def _split(model: keras.Model) -> int | None:
    """Index of the head pool in ``model.layers`` if every layer up to it is
    frozen and the head after it is the standard one, else None."""
    names = [layer.name for layer in model.layers]
    if "head_pool" not in names:
      return None
    split = names.index("head_pool")
    if names[split:] != list(models.HEAD_LAYER_NAMES):
      return None
    if any(layer.trainable_weights for layer in model.layers[:split + 1]):
      return None
    if not any(layer.weights for layer in model.layers[:split]):
      return None
    return split

  @staticmethod
  def _key(model: keras.Model, split: int, images: np.ndarray, crop_size: int,
           flip: bool, batch_size: int) -> str:
    digest = hashlib.sha256()
    for layer in model.layers[:split + 1]:
      config = {k: v for k, v in layer.get_config().items()
                if k not in ("name", "trainable")}
      digest.update(json.dumps(config, sort_keys=True, default=str).encode())
      for w in layer.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)))
    images = np.ascontiguousarray(images)
    digest.update(str((images.shape, images.dtype.str, crop_size, flip,
                       batch_size)).encode())
    digest.update(images)
    return digest.hexdigest()

  def predict_probs(self, model: keras.Model, images: np.ndarray, *,
                    crop_size: int, flip: bool, batch_size: int = 256,
                    chunk: int = 1000) -> dict[str, np.ndarray] | None:
    """{crop mode: float32 (N, classes)} for every mode in CROP_MODES, or
    None when the model's trunk is not frozen or its features do not fit."""
    split = self._split(model)
    if split is None:
      return None
    pool = model.layers[split]
    feature_shape = tuple(int(d) for d in pool.output.shape[1:])
    crops_per_image = (10 if flip else 5) + 1
    size = (len(images) * crops_per_image * int(np.prod(feature_shape))
            * np.dtype(np.float32).itemsize)
    if size > self.max_bytes:
      return None
    key = self._key(model, split, images, crop_size, flip, batch_size)
    if key in self._entries:
      self.hits += 1
      self._entries[key] = self._entries.pop(key)  # most recently used last
    else:
      self.misses += 1
      while self._entries and self.nbytes + size > self.max_bytes:
        oldest = next(iter(self._entries))
        del self._entries[oldest], self._sizes[oldest]
      trunk = keras.Model(model.inputs, pool.output)
      self._entries[key] = {
          mode: [(k, np.asarray(trunk.predict(crops, batch_size=batch_size,
                                              verbose=0), np.float32))
                 for k, crops in _crop_chunks(images, crop_size=crop_size,
                                              mode=mode, flip=flip,
                                              chunk=chunk)]
          for mode in CROP_MODES}
      self._sizes[key] = size
    x = features = keras.Input(shape=feature_shape)
    for layer in model.layers[split + 1:]:
      x = layer(x)
    head = keras.Model(features, x)
    return {mode: np.concatenate([
        _mean_over_crops(head.predict(f, batch_size=batch_size, verbose=0), k)
        for k, f in chunks]).astype(np.float32)
            for mode, chunks in self._entries[key].items()}


@dataclasses.dataclass(frozen=True)
class Timing:
  """Repeated wall-clock timings of one operation, in seconds."""
  samples: tuple[float, ...]

  @property
  def median(self) -> float:
    return statistics.median(self.samples)

  @property
  def spread(self) -> float:
    """Half the range between the fastest and slowest repeat."""
    return (max(self.samples) - min(self.samples)) / 2


def time_call(fn: Callable[[], object], *, repeats: int = 5,
              warmup: int = 1) -> Timing:
  """Times ``fn()`` after ``warmup`` untimed calls; returns every repeat."""
  if repeats < 1:
    raise ValueError(f"`repeats` must be >= 1. Received: repeats={repeats}")
  for _ in range(warmup):
    fn()
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - start)
  return Timing(tuple(samples))


def device_description() -> tuple[str, int]:
  """(device, threads) for result rows: 'GPU:<name>' or 'CPU', and the
  number of CPU threads TensorFlow may use."""
  gpus = tf.config.list_physical_devices("GPU")
  device = f"GPU:{gpus[0].name}" if gpus else "CPU"
  threads = tf.config.threading.get_intra_op_parallelism_threads() or (
      len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
      else os.cpu_count())
  return device, int(threads)


# CPU features that decide which oneDNN kernels TensorFlow runs, and so the
# last bits of every float: the same command on a CPU with another of these
# sets trains another (equally valid) run (session 18: AVX-512/AMX vs AVX2).
KERNEL_ISA = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def machine_description(cpuinfo: str | os.PathLike = "/proc/cpuinfo"
                        ) -> dict[str, object]:
  """What a run's floats depend on beyond its command: the CPU model, the
  kernel-relevant instruction sets it has (KERNEL_ISA), and the versions of
  Python, TensorFlow, Keras and NumPy. Where all of these match, a run
  repeats to the bit; where one differs it may not: float32 runs differ
  between AVX2 and AVX-512 CPUs, and repeat between an Intel and an AMD CPU
  that both have AVX-512 (results/REPRODUCTION.md, section 1). The CPU fields
  come from ``cpuinfo`` (Linux); elsewhere the model is
  platform.processor()'s and the ISA list is empty."""
  model, isa = platform.processor() or platform.machine(), []
  try:
    text = pathlib.Path(cpuinfo).read_text(errors="replace")
  except OSError:
    text = ""
  for line in text.splitlines():
    name, _, value = line.partition(":")
    name = name.strip()
    if name == "model name" and value.strip():
      model = value.strip()
    elif name == "flags":
      have = set(value.split())
      isa = [f for f in KERNEL_ISA if f in have]
      break
  return {"cpu": model, "cpu_isa": isa, "python": platform.python_version(),
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "numpy": np.__version__}


# The fields of machine_description() beside the CPU's that a float32 run's
# last bits depend on.
LIBRARY_FIELDS = ("python", "tensorflow", "keras", "numpy")


def float_class(machine: dict) -> str:
  """The class of CPU that sets a float32 run's arithmetic here: "AVX-512"
  (avx512f), "AVX2" or "other". Two CPUs of one class have repeated each
  other's runs to the bit (an Intel Xeon with AMX and an AMD EPYC, both
  AVX-512); an AVX2 CPU trains another run from the same command
  (results/REPRODUCTION.md, section 1)."""
  isa = machine.get("cpu_isa") or []
  return "AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "other"


def machine_differences(then: dict, now: dict) -> list[str]:
  """The fields of two machine_description()s that differ, as
  'field: then -> now' (empty if the floats can match)."""
  return [f"{key}: {then.get(key)} -> {now.get(key)}"
          for key in ("cpu", "cpu_isa", *LIBRARY_FIELDS)
          if then.get(key) != now.get(key)]


def shared_output_scale(payload: bytes, images: np.ndarray,
                        labels: np.ndarray, *, seed: int = 0,
                        head_pool: str | None = None) -> dict[str, float]:
  """How large the features are that an EdgeCNN1 head starts from, and the
  loss it starts at: the mean, root mean square and maximum of the m shared
  layers' output over ``images`` (uint8, centre crop of the payload's input
  size), and the mean cross-entropy of a freshly initialised EdgeCNN1-m
  (head initialised with ``seed``) on them. The head is trained with
  the paper's fixed learning rate from that start, so a CloudCNN whose
  features grew with its training gives its heads larger first logits
  (results/REPRODUCTION.md, section 2, the CIFAR-10 CloudCNN trained to the
  stopping rule).

  Raises:
    ValueError: if images and labels differ in number or are empty.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if len(images) == 0 or len(images) != len(labels):
    raise ValueError(f"shared_output_scale needs as many labels as images, "
                     f"at least one. Received: {len(images)} images, "
                     f"{len(labels)} labels")
  edge = models.build_edge_cnn_from_payload(payload, seed=seed,
                                            head_pool=head_pool)
  crop = edge.input_shape[1]
  x = data_lib.center_crop(data_lib.preprocess(images), crop)
  last = models.shared_layer_names(edge)[-1]
  both = keras.Model(edge.inputs, [edge.get_layer(last).output, edge.output])
  out, probs = both.predict(x, batch_size=256, verbose=0)  # one pass
  loss = keras.losses.sparse_categorical_crossentropy(labels, probs)
  return {"shared_output_mean": float(out.mean()),
          "shared_output_rms": float(np.sqrt(np.mean(np.square(out)))),
          "shared_output_max": float(out.max()),
          "initial_loss": float(np.mean(loss))}
