"""The names and settings a user chooses among, as data.

Datasets (Table 1), CloudCNN presets and initialisers, training
configurations (Sec. 4.3.1; the schedule they drive is in train.py, whose
docstring says what each field means and why), the sources of update-phase
labels and the main job's knobs (main_job.py). Importable without TensorFlow, so the experiment binaries list the
choices in ``--help`` without loading it; data, models, train, sweeps and
main_job re-export what belongs to them.
"""

from __future__ import annotations

import dataclasses
import pathlib

DATA_DIR_ENV = "EDGECNN_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset."""
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  flip: bool
  default_crop: int
  class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", (28, 28, 1), 10, 60000, 10000, flip=False, default_crop=24,
        class_names=tuple(str(i) for i in range(10))),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10, 60000, 10000, flip=True,
        default_crop=24,
        class_names=("t-shirt/top", "trouser", "pullover", "dress", "coat",
                     "sandal", "shirt", "sneaker", "bag", "ankle boot")),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10, 50000, 10000, flip=True, default_crop=28,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog",
                     "frog", "horse", "ship", "truck")),
}


PRESETS = ("paper", "compact")
INITIALIZERS = ("he_normal", "he_uniform", "glorot_uniform", "glorot_normal")
LABEL_SOURCES = ("cloud", "oracle")
# How a sweep chooses its N images (data.subset_order).
SUBSETS = ("random", "balanced")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every knob of a training run (train.py's docstring: each default, and
  why)."""
  batch_size: int = 32
  learning_rate: float = 0.01
  momentum: float = 0.9
  lr_decay: float = 0.1
  lr_patience: int = 10
  stop_patience: int = 30
  max_lr_reduction: float = 1000.0
  max_epochs: int | None = None
  tie_break_loss: bool = True
  warmup_steps: int = 0
  clipnorm: float | None = None
  max_restarts: int = 0
  dead_check_epochs: int = 3
  # Also declare a run dead at this global step if its running training
  # accuracy is still at most 1.5x chance (0: off). For long epochs: a dead
  # paper-preset CloudCNN would otherwise train 3 half-hour epochs first.
  dead_check_steps: int = 0
  crop_size: int | None = None  # None: the dataset's default crop.
  augment: bool = True
  # With augment, also mirror at random where the dataset allows it
  # (DatasetInfo.flip: Fashion-MNIST, CIFAR-10). False trains on random
  # crops alone (an ablation, session 57); testing is unchanged (10 crops,
  # mirrors included), as the paper's "standard 10-crop testing" says.
  flip: bool = True
  # Test (and keep) the last epoch's weights (False), as Keras'
  # EarlyStopping does by default, or the best validation epoch's (True).
  # See the module docstring.
  restore_best: bool = False
  # Also test the weights restore_best did not choose, reported beside the
  # tested ones (TrainResult.epoch_tests): one more test pass per run.
  test_both_weights: bool = False
  eval_batch_size: int = 256

  def __post_init__(self):
    for name in ("batch_size", "lr_patience", "stop_patience",
                 "dead_check_epochs", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"`{name}` must be >= 1. Received: "
                         f"{name}={getattr(self, name)}")
    if self.dead_check_steps < 0:
      raise ValueError("`dead_check_steps` must be >= 0 (0: off). Received: "
                       f"dead_check_steps={self.dead_check_steps}")
    if self.max_epochs is not None and self.max_epochs < 1:
      raise ValueError(f"`max_epochs` must be >= 1 or None. Received: "
                       f"max_epochs={self.max_epochs}")
    if not self.flip and not self.augment:
      raise ValueError("`flip=False` changes nothing when `augment=False` "
                       "(centre crops are never mirrored); drop one of them.")
    if not 0 < self.lr_decay < 1:
      raise ValueError(f"`lr_decay` must be in (0, 1). Received: "
                       f"lr_decay={self.lr_decay}")


CONFIGS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "robust": TrainConfig(warmup_steps=100, clipnorm=5.0, max_restarts=2,
                          dead_check_steps=300),
    "quick": TrainConfig(max_epochs=2, stop_patience=2, lr_patience=1),
}


def get_config(name: str, **overrides) -> TrainConfig:
  """A named configuration with some fields replaced."""
  if name not in CONFIGS:
    raise ValueError(f"Unknown training config {name!r}. Known: "
                     f"{sorted(CONFIGS)}")
  return dataclasses.replace(CONFIGS[name], **overrides)


def kept_epochs(epochs, max_epochs: int | None = None,
                name: str = "keep_epochs") -> tuple[int, ...]:
  """The epochs whose weights a run keeps: sorted, each once.

  Raises ValueError, prefixed with ``name``, for an epoch before the first
  (epochs count from 1) or after ``max_epochs``: the run would never reach it.
  """
  kept = tuple(sorted({int(e) for e in epochs}))
  early = [e for e in kept if e < 1]
  if early:
    raise ValueError(f"{name}: epoch(s) {early} come before the first "
                     f"(epochs count from 1).")
  past = [e for e in kept if max_epochs is not None and e > max_epochs]
  if past:
    raise ValueError(f"{name}: epoch(s) {past} come after the last one the "
                     f"run may train (max_epochs={max_epochs}), so they "
                     f"would never be kept.")
  return kept


@dataclasses.dataclass(frozen=True)
class MainJobConfig:
  """Knobs of the main job (defaults finish in about 15 min on 2 cores)."""
  workdir: pathlib.Path
  results_csv: pathlib.Path
  dataset: str = "fashion_mnist"
  data_dir: str | None = None
  preset: str = "compact"
  cloud_dir: pathlib.Path | None = None
  use_shipped_cloud: bool = True
  cloud_epochs: int = 2
  cloud_num_images: int | None = None
  edges: tuple[int, ...] = (3, 10)
  num_labelled: int = 120
  stream_per_edge: int = 1000
  burst: int = 50
  quiet_gap_s: float = 3.0
  retrain_threshold: int = 500
  edge_max_epochs: int = 25
  test_images: int = 2000
  quiet_bytes_per_s: float = 20_000.0
  traffic_window_s: float = 2.0
  seed: int = 0
  fresh: bool = False
