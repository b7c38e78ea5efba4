"""The paper's training schedule (Sec. 4.3.1) and named configurations (their
fields, TrainConfig, live in config.py and are re-exported here).

The ``paper`` configuration is what Sec. 4.3.1 states: mini-batch SGD with
batch 32 and momentum 0.9; learning rate 0.01, divided by 10 when validation
accuracy stops improving; stop when the validation error has not dropped for
30 epochs or the learning rate has been cut by more than 1,000x in total.

Where the paper is silent we chose, and each choice is a field:
  * ``lr_patience=10``: epochs without improvement before a cut, the default
    of TensorFlow's own ``ReduceLROnPlateau`` (the paper built on
    TensorFlow). With it both of the paper's stopping rules can end a run: a
    stalled run is cut at 10, 20 and 30 stale epochs (1,000x, not more) and
    the 30-epoch rule ends it; a run that still improves now and then
    between cuts reaches the fourth cut (>1,000x) first. (Until session 3
    the default was 5, under which the 30-epoch rule could never act and a
    stalled run ended after 20 epochs; measured on Fashion-MNIST N=120,
    EdgeCNN1-3 gained 7.5 points from the change; results/REPRODUCTION.md.)
  * "improvement" is a higher validation accuracy, or the same accuracy with
    a lower validation loss (``tie_break_loss``): validation sets of 12
    images tie constantly, and ties would otherwise cut the rate too early.
  * ``max_epochs=None``: the paper has no epoch cap.
  * ``restore_best=False``: the model is tested as it stands when training
    stops, the last epoch's weights; the paper does not say it goes back to
    the best epoch's. (Until session 7 the best validation epoch's weights
    were restored; on 12-120 validation images that picks an epoch by noise,
    and the last weights tested higher in 48 of 50 paired Fashion-MNIST
    runs; results/REPRODUCTION.md, section 2.)
  * Additions for the fragile deep stacks (FINDINGS 1-2), all off in
    ``paper``: a linear learning-rate warm-up (``warmup_steps``), gradient
    clipping (``clipnorm``) and restarts of a dead run (``max_restarts``:
    a run whose loss is not finite, or whose training and validation accuracy
    are both at chance after ``dead_check_epochs`` epochs (or, if the warm-up
    lasts longer, after the epoch that ends it), or whose running
    training accuracy is at chance after ``dead_check_steps`` steps, is
    re-initialised with a new seed). The ``robust`` configuration turns them
    on. (Measured here: the paper-preset CloudCNN under ``paper``, mixed
    bfloat16, seed 0, sat at chance after its first 29-minute epoch.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import time
from typing import Callable, Collection

import keras
import numpy as np

from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from edgecnn import models
# Defined in config.py (no TensorFlow there) and re-exported.
from edgecnn.config import CONFIGS, TrainConfig, get_config

logger = logging.getLogger("edgecnn")


@dataclasses.dataclass
class TrainResult:
  """What one training run measured."""
  epochs: int
  wall_time_s: float
  time_per_epoch_s: float
  train_images_per_s: float
  best_val_accuracy: float
  best_epoch: int
  test_accuracy_10crop: float | None
  test_accuracy_center: float | None
  trainable_params: int
  frozen_params: int
  stop_reason: str
  restarts: int
  trained: bool
  history: list[dict] = dataclasses.field(default_factory=list)
  # With TrainConfig.test_both_weights: {"best": {"ten_crop": .., "center":
  # ..}, "last": {...}}, the best validation epoch's weights and the last
  # epoch's, each tested; the test_accuracy_* fields are one of them.
  epoch_tests: dict[str, dict[str, float]] | None = None
  # The machines it trained on (evaluate.machine_description() and the
  # epoch each took over from); two or more for a run resumed elsewhere.
  machines: list[dict] = dataclasses.field(default_factory=list)


# Passes over the training pipeline per epoch of model.fit: Keras 3's
# EpochIterator makes an iterator at the start of each epoch and, when the
# dataset's length is known, another at its end that the next epoch does not
# use. Each pass draws a new shuffle and new crops, so a resumed run skips
# this many passes per finished epoch to see the batches the uninterrupted
# run saw (tests/test_train.py::test_a_resumed_run_trains_as_the_uninterrupted_run
# fails if a Keras version changes it).
_FIT_PASSES_PER_EPOCH = 2


def _rng_states(model: keras.Model) -> list:
  """The states of the model's random streams (dropout's seed generators):
  not among the weights save_weights writes, so checkpoints keep them apart,
  or a resumed run would draw the dropout masks of its first epochs again."""
  return [v for v in model.variables
          if v.path.endswith("seed_generator_state")]


class _PaperSchedule(keras.callbacks.Callback):
  """LR cuts on plateau, the two stopping rules, warm-up, best weights."""

  _STATE = ("lr", "best", "best_epoch", "wait", "lr_wait", "step",
            "stop_reason", "history", "dead")
  # Seconds between in-epoch progress lines; an epoch shorter than this logs
  # only its end-of-epoch line (a paper-preset CloudCNN epoch takes ~half an
  # hour on two CPU cores, and silence for that long looks like a hang).
  progress_every_s = 60.0

  def __init__(self, config: TrainConfig, num_classes: int, label: str,
               checkpoint_dir: str | None = None,
               snapshot_epochs: Collection[int] = (),
               snapshot: Callable[[int, keras.Model, dict], None] | None = None):
    super().__init__()
    self.snapshot_epochs = frozenset(snapshot_epochs)
    self.snapshot = snapshot
    self.config = config
    self.chance = 1.0 / num_classes
    self.label = label
    self.checkpoint = pathlib.Path(checkpoint_dir) if checkpoint_dir else None
    self.restored: dict | None = None
    self.dead = False
    self.restarts = 0  # of the run this schedule drives; kept in checkpoints
    # Epochs trained before this attempt (earlier attempts of a restarted
    # run); checkpoints keep the pipeline passes of all of them, so a resumed
    # run can bring a fresh pipeline to the pass it would have been on.
    self.data_epochs_before = 0
    # The machines this run trained on, each from the epoch it took over
    # (more than one only for a run resumed on another CPU or TensorFlow:
    # it goes on, but no longer matches an uninterrupted run to the bit).
    self.machines = [dict(eval_lib.machine_description(), from_epoch=1)]

  def on_train_begin(self, logs=None):
    self.lr = self.config.learning_rate
    self.best = (-math.inf, math.inf)
    self.best_epoch = 0
    self.best_weights = None
    self.wait = self.lr_wait = self.step = 0
    self._epoch_first_step = 0  # self.step when the epoch began
    self.stop_reason = "max_epochs"
    self.history = []
    self.t0 = time.perf_counter()
    self.elapsed_before = 0.0
    if self.restored:
      self.elapsed_before = self.restored.get("elapsed_s", 0.0)
      for key in self._STATE:
        setattr(self, key, self.restored[key])
      self.best = tuple(self.best)
      self.best_weights = self.restored["best_weights"]
    self._set_lr(self._warm(self.lr))

  def data_passes_done(self) -> int:
    """Passes over the training pipeline the restored run had made
    (checkpoints before session 8 lack the count: that of their epochs, right
    for a run that never restarted)."""
    if not self.restored:
      return 0
    return int(self.restored.get(
        "data_passes", _FIT_PASSES_PER_EPOCH * len(self.restored["history"])))

  def restore(self, model: keras.Model) -> int:
    """Loads the last checkpoint, if any; returns the epoch to resume at."""
    state_path = self.checkpoint / "state.json" if self.checkpoint else None
    if not state_path or not state_path.exists():
      return 0
    state = json.loads(state_path.read_text())
    model.optimizer.build(model.trainable_variables)
    model.load_weights(self.checkpoint / state["weights"])
    rng = _rng_states(model)
    if len(state.get("rng", [])) == len(rng):  # older checkpoints lack them
      for var, value in zip(rng, state["rng"]):
        var.assign(np.asarray(value, var.dtype))
    with np.load(self.checkpoint / state["best_file"]) as z:
      state["best_weights"] = [z[f"w{i}"] for i in range(len(z.files))] or None
    self.restored = state
    logger.info("%s: resuming from the checkpoint after epoch %d", self.label,
                len(state["history"]))
    self._note_machine(state.get("machines"), len(state["history"]) + 1)
    return len(state["history"])

  def restored_finished(self) -> bool:
    """Whether the restored checkpoint is of a run whose training had ended
    (the process was killed while it tested, or before its caller stored
    the result): such a run is tested again, not trained further. Its last
    epoch's checkpoint holds the stop reason the schedule had set."""
    if not self.restored:
      return False
    if self.restored.get("stop_reason", "max_epochs") != "max_epochs":
      return True
    return bool(self.config.max_epochs) and (
        len(self.restored["history"]) >= self.config.max_epochs)

  def _note_machine(self, then: list[dict] | None, resumed_at: int) -> None:
    """Keeps the checkpoint's machine list, adding this machine if it
    differs; says so, as the rest of the run may not be bit-identical to
    an uninterrupted one (oneDNN picks kernels by CPU)."""
    now = dict(self.machines[0], from_epoch=resumed_at)
    if not then:
      logger.warning(
          "%s: the checkpoint does not say which machine wrote it (an edgecnn "
          "older than the machine record wrote it); if that was another CPU, "
          "TensorFlow or Keras, "
          "the resumed run may not match an uninterrupted one to the bit",
          self.label)
      self.machines = [now]
      return
    differences = eval_lib.machine_differences(then[-1], now)
    self.machines = list(then) + [now] * bool(differences)
    if differences:
      before, after = eval_lib.float_class(then[-1]), eval_lib.float_class(now)
      same_versions = all(then[-1].get(k) == now.get(k)
                          for k in eval_lib.LIBRARY_FIELDS)
      if before == after == "AVX-512" and same_versions:
        outlook = ("both CPUs are AVX-512 with the same library versions, "
                   "which have repeated each other's runs to the bit here")
      elif before != after:
        outlook = (f"the CPU class changed ({before} -> {after}), so from here "
                   "its floats will not match an uninterrupted run's")
      else:
        outlook = ("from here its floats may not match an uninterrupted "
                   "run's")
      logger.warning(
          "%s: resuming at epoch %d on another machine than the one that "
          "wrote the checkpoint (%s): training goes on; %s", self.label,
          resumed_at, "; ".join(differences), outlook)

  def _save_checkpoint(self, epoch: int) -> None:
    """Weights, optimizer and schedule state; state.json is the commit."""
    self.checkpoint.mkdir(parents=True, exist_ok=True)
    weights, best = f"epoch{epoch}.weights.h5", f"best{epoch}.npz"
    self.model.save_weights(self.checkpoint / weights)
    np.savez(self.checkpoint / best, **{
        f"w{i}": w for i, w in enumerate(self.best_weights or [])})
    state = {key: getattr(self, key) for key in self._STATE}
    state.update(weights=weights, best_file=best, elapsed_s=self.elapsed_before
                 + time.perf_counter() - self.t0, restarts=self.restarts,
                 data_passes=_FIT_PASSES_PER_EPOCH * (self.data_epochs_before
                                                      + len(self.history)),
                 rng=[v.numpy().tolist() for v in _rng_states(self.model)],
                 machines=self.machines)
    tmp = self.checkpoint / "state.json.tmp"
    tmp.write_text(json.dumps(state, default=float))
    os.replace(tmp, self.checkpoint / "state.json")
    for old in self.checkpoint.iterdir():
      if old.name not in (weights, best, "state.json") and \
          old.name.startswith(("epoch", "best")):
        old.unlink()

  def _warm(self, lr):
    if self.config.warmup_steps and self.step < self.config.warmup_steps:
      return lr * (self.step + 1) / self.config.warmup_steps
    return lr

  def _set_lr(self, lr):
    self.model.optimizer.learning_rate.assign(lr)

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_t0 = self._last_progress = time.perf_counter()
    self._epoch_first_step = self.step

  def _dead_check_due(self, epoch: int) -> bool:
    """Whether the epoch-end dead check runs now: after epoch
    ``dead_check_epochs``, or, if the warm-up is still ramping the rate
    then, after the first epoch that ends it (a small-N edge run's warm-up
    of 100 steps spans tens of epochs, and a run at a few percent of its
    rate cannot be told from a dead one). Without a warm-up, or with one
    shorter than the check's epochs, it is epoch ``dead_check_epochs``."""
    due, warmup = self.config.dead_check_epochs, self.config.warmup_steps
    if epoch + 1 < due or self.step < warmup:
      return False
    return epoch + 1 == due or self._epoch_first_step < warmup

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    acc = float(logs.get("accuracy", math.nan))
    if (self.config.dead_check_steps and self.step == self.config.dead_check_steps
        and acc <= 1.5 * self.chance):
      logger.warning("%s: training accuracy %.4f after %d steps is at chance",
                     self.label, acc, self.step)
      self.dead = True
      if self.config.max_restarts:
        self._stop("dead")
    now = time.perf_counter()
    if now - self._last_progress < self.progress_every_s:
      return
    self._last_progress = now
    done, steps = batch + 1, (self.params or {}).get("steps")
    rate = done * self.config.batch_size / max(now - self._epoch_t0, 1e-9)
    eta = (f", epoch ends in ~{(steps - done) * self.config.batch_size / rate:.0f} s"
           if steps else "")
    logger.info("%s epoch %d: step %d/%s, loss %.4f acc %.4f (running), "
                "%.1f images/s%s", self.label, len(self.history) + 1, done,
                steps or "?", float(logs.get("loss", math.nan)), acc, rate, eta)

  def on_train_batch_begin(self, batch, logs=None):
    if self.config.warmup_steps and self.step <= self.config.warmup_steps:
      self._set_lr(self._warm(self.lr))
    self.step += 1

  def _stop(self, reason):
    self.stop_reason = reason
    self.model.stop_training = True

  def on_epoch_end(self, epoch, logs=None):
    if self.stop_reason == "dead" and self.model.stop_training:
      # Declared dead mid-epoch by the step check: record the partial epoch,
      # keep the verdict, and leave no checkpoint of a dead run behind.
      self._epoch_end(epoch, logs)
      self._stop("dead")
      return
    self._epoch_end(epoch, logs)
    # Before the checkpoint: a run killed between the two retrains this
    # epoch on resuming and takes the snapshot then; the other order would
    # resume past the epoch without it.
    if self.snapshot is not None and epoch + 1 in self.snapshot_epochs:
      self.snapshot(epoch + 1, self.model, dict(self.history[-1]))
    if self.checkpoint is not None:
      self._save_checkpoint(epoch + 1)

  def _epoch_end(self, epoch, logs=None):
    logs = logs or {}
    loss, acc = logs.get("loss", math.nan), logs.get("accuracy", 0.0)
    val_loss, val_acc = logs.get("val_loss", math.nan), logs.get("val_accuracy", 0.0)
    self.history.append({"epoch": epoch + 1, "loss": loss, "accuracy": acc,
                         "val_loss": val_loss, "val_accuracy": val_acc,
                         "lr": self.lr})
    logger.info("%s epoch %d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f "
                "lr %.2g", self.label, epoch + 1, loss, acc, val_loss, val_acc,
                self.lr)
    if not math.isfinite(loss):
      return self._stop("diverged")
    key = (val_acc, -val_loss if self.config.tie_break_loss else 0.0)
    if key > (self.best[0], -self.best[1] if self.config.tie_break_loss else 0.0):
      self.best = (val_acc, val_loss)
      self.best_epoch = epoch + 1
      self.best_weights = self.model.get_weights()
      self.wait = self.lr_wait = 0
    else:
      self.wait += 1
      self.lr_wait += 1
      if self.lr_wait >= self.config.lr_patience:
        self.lr *= self.config.lr_decay
        self.lr_wait = 0
        self._set_lr(self._warm(self.lr))
    if (self._dead_check_due(epoch)
        and acc <= 1.5 * self.chance and val_acc <= 1.5 * self.chance):
      self.dead = True
      if self.config.max_restarts:
        return self._stop("dead")
    if self.wait >= self.config.stop_patience:
      return self._stop(f"no_val_improvement_{self.config.stop_patience}_epochs")
    if self.config.learning_rate / self.lr > self.config.max_lr_reduction * (1 + 1e-9):
      return self._stop(f"lr_reduced_over_{self.config.max_lr_reduction:g}x")


def _compile(model: keras.Model, config: TrainConfig) -> None:
  model.compile(
      optimizer=keras.optimizers.SGD(learning_rate=config.learning_rate,
                                     momentum=config.momentum,
                                     clipnorm=config.clipnorm),
      loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _needs_custom_loop(strategy) -> bool:
  # Keras 3's fit() fails under MultiWorkerMirroredStrategy (PerReplica
  # values reach the metrics; keras-team/keras#20585), so multi-worker runs
  # use a custom loop with strategy.run that drives the same schedule.
  import tensorflow as tf
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _fit_distributed(model, train_ds, val_ds, config: TrainConfig, strategy,
                     schedule: _PaperSchedule) -> None:
  """Synchronous data-parallel SGD: each worker takes its share of every
  global batch of ``config.batch_size`` images; gradients are all-reduced."""
  import tensorflow as tf
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  dist_ds = strategy.experimental_distribute_dataset(
      train_ds.with_options(options))
  optimizer = model.optimizer
  global_batch = config.batch_size

  def step(x, y):
    with tf.GradientTape() as tape:
      probs = model(x, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(y, probs)
      loss = tf.nn.compute_average_loss(per_example,
                                        global_batch_size=global_batch)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(probs, -1), tf.cast(y, tf.int64)), tf.float32))
    return loss * tf.cast(tf.shape(y)[0], tf.float32), correct, \
        tf.cast(tf.shape(y)[0], tf.float32)

  @tf.function
  def train_step(x, y):
    out = strategy.run(step, args=(x, y))
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for v in out]

  @tf.function
  def val_step(x, y):
    probs = model(x, training=False)
    loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(probs, -1), tf.cast(y, tf.int64)), tf.float32))
    return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

  schedule.checkpoint = None  # resuming is for single-process runs
  schedule.set_model(model)
  model.stop_training = False
  schedule.on_train_begin()
  epoch = 0
  while not model.stop_training and (config.max_epochs is None
                                     or epoch < config.max_epochs):
    totals = np.zeros(3)
    for batch, (x, y) in enumerate(dist_ds):
      schedule.on_train_batch_begin(batch)
      totals += [float(v) for v in train_step(x, y)]
    val = np.zeros(3)
    for x, y in val_ds:
      val += [float(v) for v in val_step(x, y)]
    schedule.on_epoch_end(epoch, {
        "loss": totals[0] / max(totals[2], 1) * strategy.num_replicas_in_sync,
        "accuracy": totals[1] / max(totals[2], 1),
        "val_loss": val[0] / max(val[2], 1),
        "val_accuracy": val[1] / max(val[2], 1)})
    epoch += 1


def reinitialize(model: keras.Model, seed: int) -> None:
  """Draws new values for every trainable kernel (biases to zero).

  Frozen layers (EdgeCNN1's shared layers) keep their weights; trainable
  layers that started at the cloud's (``transferred_weights``, an EdgeCNN1
  built with ``train_shared``) go back to those values, so a restart starts
  where the run did, but for a new head.
  """
  transferred = getattr(model, "transferred_weights", None) or {}
  for i, layer in enumerate(model.layers):
    if not layer.trainable or not layer.weights:
      continue
    if layer.name in transferred:
      layer.set_weights(transferred[layer.name])
      continue
    init = getattr(layer, "kernel_initializer", None)
    if init is None:
      continue
    fresh = type(init)(seed=seed * 1000 + i)
    layer.kernel.assign(fresh(layer.kernel.shape))
    if getattr(layer, "bias", None) is not None:
      layer.bias.assign(np.zeros(layer.bias.shape, layer.bias.dtype))


def discard_checkpoint(checkpoint_dir: str | os.PathLike) -> None:
  """Removes a finished run's checkpoint (after its result is stored)."""
  shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _checkpointed_restarts(checkpoint_dir: str | None) -> int:
  """Restarts already made by the run a checkpoint belongs to (0 if none)."""
  state = pathlib.Path(checkpoint_dir) / "state.json" if checkpoint_dir else None
  if not state or not state.exists():
    return 0
  return int(json.loads(state.read_text()).get("restarts", 0))


def snapshot_checkpoint(source: str | os.PathLike, dest: str | os.PathLike,
                        *, attempts: int = 5) -> dict:
  """Copies a run's per-epoch checkpoint, consistent while the run trains on.

  A checkpoint directory (``train_cloud``'s, or an ``edge_accuracy`` run's
  of 10,000 images or more) holds ``state.json`` and the two files it names,
  the epoch's weights and the best epoch's; at each epoch's end the run
  writes the new pair, swaps ``state.json`` and deletes the old pair, so a
  plain copy taken as an epoch ends can hold a state whose files are gone.
  This copies the named files, checks that ``state.json`` did not change
  meanwhile (else tries again, up to ``attempts`` times), and only then puts
  the copy at ``dest``, replacing what was there: a failed snapshot leaves
  ``dest`` as it was. Copy ``dest`` back to where the command writes its
  checkpoint and rerun the command to resume (results/checkpoints/README.md).

  Returns ``{"epoch": epochs done, "best_epoch": ..., "files": [...]}``.
  Raises FileNotFoundError if ``source`` holds no checkpoint, RuntimeError if
  a consistent copy was not caught in ``attempts`` tries.
  """
  source, dest = pathlib.Path(source), pathlib.Path(dest)
  state_path = source / "state.json"
  if not state_path.is_file():
    raise FileNotFoundError(
        f"No checkpoint at {source} (no state.json there). A checkpoint is "
        "the directory a run writes after each epoch: "
        "<workdir>/cloud/<dataset>-<preset>-seed<s>/checkpoint/ for "
        "train_cloud, <workdir>/sweep_checkpoints/<run>/ for edge_accuracy.")
  if dest.resolve() == source.resolve():
    raise ValueError(f"snapshot_checkpoint: dest is the source ({source})")
  dest.parent.mkdir(parents=True, exist_ok=True)
  tries = max(1, attempts)
  for _ in range(tries):
    before = state_path.read_bytes()
    state = json.loads(before)
    names = [state["weights"], state["best_file"]]
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
      for name in names:
        shutil.copy2(source / name, tmp / name)
      # A new epoch may have landed meanwhile, its files beside ours.
      consistent = state_path.read_bytes() == before
    except FileNotFoundError:  # the run moved on mid-copy and deleted it
      consistent = False
    if not consistent:
      shutil.rmtree(tmp)
      continue
    (tmp / "state.json").write_bytes(before)
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
      os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return {"epoch": len(state["history"]), "best_epoch": state.get(
        "best_epoch"), "files": names + ["state.json"]}
  raise RuntimeError(
      f"No consistent copy of the checkpoint at {source} in {tries} "
      "tries: a new epoch landed during each; try again, or stop the run "
      "first (it resumes from the checkpoint).")


def _left_chance(best_val: float, test: dict, chance: float) -> bool:
  """Whether a run trained at all: the test accuracy (10,000 images, when
  measured) or else the validation accuracy is at least twice chance. The
  validation sets of small N (12 images) are too coarse to decide alone."""
  measured = [v for v in (test["ten_crop"], test["center"]) if v is not None]
  return bool((max(measured) if measured else best_val) >= 2 * chance)


def _trained(best_val: float, test: dict, chance: float,
             stop_reason: str) -> bool:
  """The run's verdict: it left chance and was not ended as dead.

  A run found at chance by the dead-run check but not stopped (the paper
  config restarts nothing) and that left chance later did train: before
  session 12 such runs were recorded as untrained (MNIST EdgeCNN0-10 at
  97.54% among them).
  """
  return _left_chance(best_val, test, chance) and stop_reason != "dead"


def train_and_evaluate(model: keras.Model, dataset: data_lib.Dataset,
                       split: data_lib.Split, config: TrainConfig, *,
                       seed: int, train_labels: np.ndarray | None = None,
                       evaluate_test: bool = True,
                       tensorboard_dir: str | None = None,
                       label: str | None = None,
                       strategy=None,
                       checkpoint_dir: str | None = None,
                       trunk_cache: eval_lib.TrunkCache | None = None,
                       snapshot_epochs: Collection[int] = (),
                       snapshot: Callable[[int, keras.Model, dict], None]
                       | None = None,
                       keep_checkpoint: bool = False,
                       ) -> TrainResult:
  """Trains a model with the paper's schedule and evaluates it on test.

  Args:
    model: an uncompiled classifier whose input side is the crop size.
    dataset: the dataset; images are cropped to the model's input size.
    split: training and validation indices into the training set.
    config: the schedule.
    seed: seed of shuffling, augmentation and restarts.
    train_labels: labels to train and validate with, aligned with
      ``dataset.y_train`` (e.g. CloudCNN's labels in the update phase);
      defaults to the ground truth. Test accuracy always uses the truth.
    evaluate_test: whether to run 10-crop and centre-crop testing.
    tensorboard_dir: if set, TensorBoard logs go there.
    label: name used in progress lines (defaults to the model name).
    strategy: an optional tf.distribute strategy the model was built under.
    checkpoint_dir: if set, the run is checkpointed after every epoch and a
      rerun with the same directory resumes where it stopped; a run killed
      after training ended (in its test passes) is tested again, not
      retrained. Removed once the tests are done, unless keep_checkpoint.
    keep_checkpoint: leave the checkpoint for the caller to remove with
      ``discard_checkpoint`` once it has stored the result (so that nothing
      is lost if the process dies in between).
    trunk_cache: if set, test features of a frozen trunk (EdgeCNN1) are
      taken from and kept in it (see evaluate.TrunkCache).
    snapshot_epochs: epochs (1-based) after which ``snapshot`` is called.
    snapshot: called as ``snapshot(epoch, model, history_entry)`` with the
      model holding that epoch's weights (not the best so far), e.g. to save
      them; a resumed run does not repeat the snapshots of the epochs its
      checkpoint holds.

  Returns:
    A TrainResult.
  """
  info = dataset.info
  crop = config.crop_size or info.default_crop
  if tuple(model.input_shape[1:3]) != (crop, crop):
    raise ValueError(f"Model input {model.input_shape[1:]} does not match the "
                     f"crop size {crop}; build the model with input_shape="
                     f"({crop}, {crop}, {info.image_shape[2]}).")
  if len(split.train) == 0 or len(split.val) == 0:
    raise ValueError(f"Both the training ({len(split.train)}) and validation "
                     f"({len(split.val)}) parts of the split must be non-empty.")
  if not config.flip and not info.flip:
    raise ValueError(f"`flip=False` asks for no training mirrors, but "
                     f"{info.name} is never mirrored (its classes change "
                     "under a mirror); leave flip at True.")
  labels = dataset.y_train if train_labels is None else np.asarray(train_labels)
  if labels.shape != dataset.y_train.shape:
    raise ValueError(f"`train_labels` must have shape {dataset.y_train.shape}. "
                     f"Received: {labels.shape}")
  x_tr, y_tr = dataset.x_train[split.train], labels[split.train]
  x_val, y_val = dataset.x_train[split.val], labels[split.val]
  train_ds = data_lib.train_pipeline(
      x_tr, y_tr, batch_size=config.batch_size, crop_size=crop,
      flip=info.flip and config.flip, seed=seed) if config.augment else \
      data_lib.eval_pipeline(x_tr, y_tr, batch_size=config.batch_size,
                             crop_size=crop)
  val_ds = data_lib.eval_pipeline(x_val, y_val,
                                  batch_size=config.eval_batch_size,
                                  crop_size=crop)
  label = label or model.name
  callbacks_extra = []
  if tensorboard_dir:
    callbacks_extra.append(keras.callbacks.TensorBoard(tensorboard_dir))

  restarts = _checkpointed_restarts(checkpoint_dir)
  total_epochs = 0
  start = time.perf_counter()
  while True:
    schedule = _PaperSchedule(config, info.num_classes, label, checkpoint_dir,
                              snapshot_epochs, snapshot)
    schedule.restarts = restarts
    schedule.data_epochs_before = total_epochs
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
      _compile(model, config)
    initial_epoch = schedule.restore(model) if checkpoint_dir else 0
    finished = schedule.restored_finished()
    if (schedule.restored and config.augment and not finished
        and not _needs_custom_loop(strategy)):  # that loop does not resume
      # Each pass over the pipeline draws a new shuffle and new crops from
      # its seed; a fresh pipeline would replay the first passes' batches
      # (session 8: a resumed N=60,000 run saw epochs 1-22's batches again as
      # epochs 23-44). Bring it to the pass the killed run was on.
      data_lib.skip_passes(train_ds, schedule.data_passes_done()
                           - _FIT_PASSES_PER_EPOCH * total_epochs)
    if finished:
      # Session 35 lost an hour-long run this way: killed in its test
      # passes, after the checkpoint had been deleted. Now the checkpoint
      # outlives the tests, and a rerun tests the run it holds.
      logger.info("%s: the checkpoint's training had ended (%s after epoch "
                  "%d); not training further", label,
                  schedule.restored.get("stop_reason", "max_epochs"),
                  initial_epoch)
      schedule.set_model(model)
      schedule.on_train_begin()
    elif _needs_custom_loop(strategy):
      _fit_distributed(model, train_ds, val_ds, config, strategy, schedule)
    else:
      model.fit(train_ds, validation_data=val_ds, shuffle=False,
                epochs=config.max_epochs or 1_000_000, verbose=0,
                initial_epoch=initial_epoch,
                callbacks=[schedule] + callbacks_extra)
    total_epochs += len(schedule.history)
    if (schedule.stop_reason in ("dead", "diverged")
        and restarts < config.max_restarts):
      restarts += 1
      logger.warning("%s: run %s after %d epochs; restart %d/%d with a new "
                     "initialisation", label, schedule.stop_reason,
                     len(schedule.history), restarts, config.max_restarts)
      if checkpoint_dir:  # the restart checkpoints afresh, under its number
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
      reinitialize(model, seed + 7919 * restarts)
      continue
    break
  wall = time.perf_counter() - start
  both = evaluate_test and config.test_both_weights
  last_weights = model.get_weights() if both else None
  if schedule.restored:
    wall += schedule.restored.get("elapsed_s", 0.0)
  has_best = schedule.best_weights is not None
  restore = config.restore_best and has_best  # the tested weights are the best
  best_val = schedule.best[0] if has_best else 0.0
  # The end of training, and what the (often longer) test passes will
  # measure: without it a log's last epoch line leaves both unsaid.
  if not evaluate_test:
    testing = ""
  elif both and has_best:
    testing = "; testing the last and the best epoch's weights"
  else:
    testing = f"; testing the {'best' if restore else 'last'} epoch's weights"
  logger.info("%s: stopped after %d epochs (%s), best val_acc %.4f at epoch "
              "%d, %.0f s of training%s", label, total_epochs,
              schedule.stop_reason, best_val, schedule.best_epoch, wall,
              testing)

  def test_pass():
    return eval_lib.evaluate(model, dataset.x_test, dataset.y_test,
                             crop_size=crop, flip=info.flip,
                             batch_size=config.eval_batch_size,
                             cache=trunk_cache)

  # The model is left with the weights its test_accuracy_* are of.
  epoch_tests = None
  test = {"ten_crop": None, "center": None}
  if both:
    epoch_tests = {"last": test_pass()}  # the model holds the last weights
    epoch_tests["best"] = epoch_tests["last"]
    if has_best:
      model.set_weights(schedule.best_weights)
      epoch_tests["best"] = test_pass()
      if not config.restore_best:
        model.set_weights(last_weights)
    test = epoch_tests["best" if config.restore_best else "last"]
  else:
    if restore:
      model.set_weights(schedule.best_weights)
    if evaluate_test:
      test = test_pass()
  trainable, frozen = models.count_params(model)
  chance = 1.0 / info.num_classes
  if checkpoint_dir and not keep_checkpoint:
    discard_checkpoint(checkpoint_dir)
  return TrainResult(
      epochs=total_epochs, wall_time_s=wall,
      time_per_epoch_s=wall / max(total_epochs, 1),
      train_images_per_s=total_epochs * len(split.train) / wall,
      best_val_accuracy=float(best_val), best_epoch=schedule.best_epoch,
      test_accuracy_10crop=test["ten_crop"], test_accuracy_center=test["center"],
      trainable_params=trainable, frozen_params=frozen,
      stop_reason=schedule.stop_reason, restarts=restarts,
      trained=_trained(best_val, test, chance, schedule.stop_reason),
      history=schedule.history, epoch_tests=epoch_tests,
      machines=schedule.machines)
