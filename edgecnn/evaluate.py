"""10-crop and centre-crop evaluation (Sec. 4.3.1) and timing helpers."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from edgecnn import data as data_lib

CROP_MODES = ("ten_crop", "center")


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
  if mode not in CROP_MODES:
    raise ValueError(f"`mode` must be one of {list(CROP_MODES)}. Received: "
                     f"mode={mode!r}")
  out = []
  for start in range(0, len(images), chunk):
    x = data_lib.preprocess(images[start:start + chunk])
    if mode == "center":
      out.append(model.predict(data_lib.center_crop(x, crop_size),
                               batch_size=batch_size, verbose=0))
      continue
    crops = data_lib.ten_crop(x, crop_size, flip=flip)
    k, n = crops.shape[0], crops.shape[1]
    flat = tf.reshape(crops, [k * n, *crops.shape[2:]])
    probs = model.predict(flat, batch_size=batch_size, verbose=0)
    out.append(probs.reshape(k, n, -1).mean(axis=0))
  return np.concatenate(out).astype(np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of probabilities against integer labels."""
  return float(np.mean(np.argmax(probs, axis=-1) == np.asarray(labels)))


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, *,
             crop_size: int, flip: bool,
             batch_size: int = 256) -> dict[str, float]:
  """Top-1 accuracy with 10-crop (5-crop without flips) and centre crop."""
  return {
      mode: accuracy(predict_probs(model, images, crop_size=crop_size,
                                   mode=mode, flip=flip,
                                   batch_size=batch_size), labels)
      for mode in CROP_MODES
  }


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
