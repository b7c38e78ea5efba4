"""evaluate.TrunkCache: EdgeCNN1's frozen-trunk features reused across runs."""

import logging
import types

import keras
import numpy as np
import pandas as pd
import pytest

from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from edgecnn import models
from edgecnn import results
from edgecnn import sweeps
from edgecnn import train as train_lib
from tests.conftest import fake_dataset

CROP = 24


def _edge(cloud, m, *, pretrained=True, seed=0):
  edge = models.build_edge_cnn(cloud, m, pretrained=pretrained, seed=seed)
  # A head that is not at its initial values, as after training.
  fc = edge.get_layer("fc1")
  fc.kernel.assign(fc.kernel + 0.05 * np.sin(np.arange(
      np.prod(fc.kernel.shape))).reshape(fc.kernel.shape))
  return edge


@pytest.fixture(scope="module")
def setup():
  keras.utils.set_random_seed(0)
  cloud = models.build_cloud_cnn((CROP, CROP, 1), preset="compact", seed=0)
  return cloud, fake_dataset("fashion_mnist", n_train=40, n_test=30)


@pytest.mark.parametrize("flip", [True, False])
def test_cached_probabilities_equal_the_whole_model(setup, flip):
  cloud, ds = setup
  cache = eval_lib.TrunkCache()
  for m in (3, 10):
    edge = _edge(cloud, m)
    first = cache.predict_probs(edge, ds.x_test, crop_size=CROP, flip=flip,
                                batch_size=16)
    again = cache.predict_probs(edge, ds.x_test, crop_size=CROP, flip=flip,
                                batch_size=16)
    for mode in eval_lib.CROP_MODES:
      whole = eval_lib.predict_probs(edge, ds.x_test, crop_size=CROP,
                                     mode=mode, flip=flip, batch_size=16)
      np.testing.assert_array_equal(first[mode], whole)
      np.testing.assert_array_equal(again[mode], whole)
  assert (cache.misses, cache.hits) == (2, 2)


def test_a_new_head_on_the_same_trunk_is_a_hit(setup):
  cloud, ds = setup
  cache = eval_lib.TrunkCache()
  a, b = _edge(cloud, 5, seed=1), _edge(cloud, 5, seed=2)
  probs_a = cache.predict_probs(a, ds.x_test, crop_size=CROP, flip=True)
  probs_b = cache.predict_probs(b, ds.x_test, crop_size=CROP, flip=True)
  assert (cache.misses, cache.hits) == (1, 1)
  assert not np.array_equal(probs_a["ten_crop"], probs_b["ten_crop"])
  np.testing.assert_array_equal(
      probs_b["ten_crop"],
      eval_lib.predict_probs(b, ds.x_test, crop_size=CROP, flip=True))


def test_other_trunks_images_or_protocols_are_misses(setup):
  cloud, ds = setup
  cache = eval_lib.TrunkCache()
  edge = _edge(cloud, 3)
  cache.predict_probs(edge, ds.x_test, crop_size=CROP, flip=True)
  other_cloud = models.build_cloud_cnn((CROP, CROP, 1), preset="compact",
                                       seed=5)
  cache.predict_probs(_edge(other_cloud, 3), ds.x_test, crop_size=CROP,
                      flip=True)
  cache.predict_probs(edge, ds.x_test[:-1], crop_size=CROP, flip=True)
  cache.predict_probs(edge, ds.x_test, crop_size=CROP, flip=False)
  assert (cache.misses, cache.hits) == (4, 0)


def test_trainable_trunks_and_oversized_features_are_left_whole(setup):
  cloud, ds = setup
  cache = eval_lib.TrunkCache()
  assert cache.predict_probs(_edge(cloud, 3, pretrained=False), ds.x_test,
                             crop_size=CROP, flip=True) is None
  assert cache.predict_probs(cloud, ds.x_test, crop_size=CROP,
                             flip=True) is None
  # EdgeCNN1 whose shared layers train: the cloud's weights, not frozen.
  tuned = models.build_edge_cnn_from_payload(
      models.export_shared_layers(cloud, 3), train_shared=True)
  assert cache.predict_probs(tuned, ds.x_test, crop_size=CROP,
                             flip=True) is None
  # m=3 compact: 12x12x32 float32 features per crop, 11 crops per image.
  need = len(ds.x_test) * 11 * 12 * 12 * 32 * 4
  small = eval_lib.TrunkCache(max_bytes=need - 1)
  assert small.predict_probs(_edge(cloud, 3), ds.x_test, crop_size=CROP,
                             flip=True) is None
  exact = eval_lib.TrunkCache(max_bytes=need)
  assert exact.predict_probs(_edge(cloud, 3), ds.x_test, crop_size=CROP,
                             flip=True) is not None
  assert exact.nbytes == need
  # A second trunk evicts the first rather than exceeding the budget.
  exact.predict_probs(_edge(cloud, 5), ds.x_test, crop_size=CROP, flip=True)
  assert exact.nbytes <= need and exact.misses == 2
  with pytest.raises(ValueError, match="max_bytes=-1"):
    eval_lib.TrunkCache(max_bytes=-1)


def test_evaluate_with_a_cache_gives_the_same_accuracies(setup):
  cloud, ds = setup
  cache = eval_lib.TrunkCache()
  for pretrained in (True, False):
    edge = _edge(cloud, 3, pretrained=pretrained)
    kw = dict(crop_size=CROP, flip=True, batch_size=16)
    assert eval_lib.evaluate(edge, ds.x_test, ds.y_test, cache=cache, **kw) \
        == eval_lib.evaluate(edge, ds.x_test, ds.y_test, **kw)
  assert (cache.misses, cache.hits) == (1, 0)  # EdgeCNN0 never cached


def test_sweep_rows_are_the_same_with_and_without_the_cache(setup, tmp_path):
  cloud, ds = setup
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40), seeds=(0,),
                          shared=(3,), labels="oracle")
  config = train_lib.CONFIGS["quick"]
  values = {}
  for name, cache in (("whole", None), ("cached", eval_lib.TrunkCache())):
    log = results.ResultLog(tmp_path / f"{name}.csv",
                            {"experiment": "edge_accuracy"})
    sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, trunk_cache=cache)
    rows = pd.read_csv(tmp_path / f"{name}.csv")
    acc = rows[rows.metric.str.startswith("test_accuracy")]
    values[name] = sorted(zip(acc.model, acc.num_images, acc.metric, acc.value))
    if cache is not None:
      assert (cache.misses, cache.hits) == (1, 1)
  assert len(values["whole"]) == 8
  assert values["cached"] == values["whole"]


class _Kill(Exception):
  """Stands for the process dying at a chosen point."""


def _checkpointed_sweep(cloud, tmp_path, max_epochs, suffix="", **changes):
  """A sweep of N=20 and 40 whose N=40 run checkpoints; its run directory.

  ``changes`` are SweepSpec fields of an ablation, ``suffix`` the part of
  the run directory's name its condition adds.
  """
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40), seeds=(0,),
                          shared=(3,), labels="oracle", models=(True,),
                          **changes)
  config = train_lib.get_config("paper", max_epochs=max_epochs)
  root = tmp_path / "ckpt"
  log = results.ResultLog(tmp_path / "rows.csv", {"experiment": "edge_accuracy"})
  kwargs = dict(checkpoint_root=root, checkpoint_min_images=40)
  run_dir = root / (f"fashion_mnist-compact-EdgeCNN1-3-N40-seed0-oracle"
                    f"{suffix}-{models.model_hash(cloud)[:12]}")
  return spec, config, log, kwargs, run_dir


@pytest.mark.parametrize("suffix,changes", [
    ("", {}),
    # An ablation's run resumes from a directory of its own, shared layers
    # (trained here) and all.
    ("-head_pool_paper-shared_trained",
     {"head_pool": "paper", "train_shared": True})])
def test_a_killed_large_run_resumes_from_its_checkpoint(setup, tmp_path,
                                                       monkeypatch, suffix,
                                                       changes):
  cloud, ds = setup
  seen = []
  real_train = train_lib.train_and_evaluate
  real_save = train_lib._PaperSchedule._save_checkpoint

  def spy(*args, **kwargs):
    seen.append(kwargs.get("checkpoint_dir"))
    return real_train(*args, **kwargs)

  def save_then_die(self, epoch):
    real_save(self, epoch)
    if epoch == 2:
      raise _Kill()

  monkeypatch.setattr(sweeps.train_lib, "train_and_evaluate", spy)
  spec, config, log, kwargs, run_dir = _checkpointed_sweep(
      cloud, tmp_path, max_epochs=4, suffix=suffix, **changes)
  monkeypatch.setattr(train_lib._PaperSchedule, "_save_checkpoint",
                      save_then_die)
  with pytest.raises(_Kill):
    sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, **kwargs)
  assert not list(log.claims_dir.iterdir())  # released on the way out
  assert seen == [None, str(run_dir)]  # N=20 is below the threshold
  assert (run_dir / "state.json").exists()
  monkeypatch.setattr(train_lib._PaperSchedule, "_save_checkpoint", real_save)
  sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, **kwargs)
  assert seen[2:] == [str(run_dir)]  # N=20 was done: skipped
  rows = pd.read_csv(tmp_path / "rows.csv")
  epochs = rows[(rows.num_images == 40) & (rows.metric == "epochs")].value
  assert epochs.tolist() == [4]  # 2 before the kill, 2 after the resume
  assert not run_dir.exists()  # removed when the run ended


def test_a_large_run_killed_while_it_tests_is_tested_not_retrained(
    setup, tmp_path, monkeypatch):
  cloud, ds = setup
  spec, config, log, kwargs, run_dir = _checkpointed_sweep(
      cloud, tmp_path, max_epochs=2)

  real_append = results.ResultLog.append

  def die_on_the_large_run(self, key, rows):
    if key["num_images"] == 40:
      raise _Kill()  # as a session ending between the tests and the rows
    return real_append(self, key, rows)

  monkeypatch.setattr(results.ResultLog, "append", die_on_the_large_run)
  with pytest.raises(_Kill):
    sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, **kwargs)
  assert (run_dir / "state.json").exists()  # trained, tested, not stored
  monkeypatch.setattr(results.ResultLog, "append", real_append)
  saves = []
  real_save = train_lib._PaperSchedule._save_checkpoint
  monkeypatch.setattr(train_lib._PaperSchedule, "_save_checkpoint",
                      lambda self, epoch: saves.append(epoch)
                      or real_save(self, epoch))
  sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, **kwargs)
  assert saves == []  # the rerun trained no epoch
  rows = pd.read_csv(tmp_path / "rows.csv")
  large = rows[rows.num_images == 40]
  assert large[large.metric == "epochs"].value.tolist() == [2]
  assert large[large.metric == "test_accuracy_10crop"].value.between(0, 1).all()
  assert not run_dir.exists()  # removed once its rows were written


def test_a_checkpoint_left_beside_finished_rows_is_removed_by_the_next_sweep(
    setup, tmp_path, monkeypatch, caplog):
  cloud, ds = setup
  spec, config, log, kwargs, run_dir = _checkpointed_sweep(
      cloud, tmp_path, max_epochs=1)

  def die(path):
    raise _Kill()  # killed between the rows and the checkpoint's removal

  real_discard = train_lib.discard_checkpoint
  monkeypatch.setattr(train_lib, "discard_checkpoint", die)
  with pytest.raises(_Kill):
    sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log, **kwargs)
  assert (run_dir / "state.json").exists()
  rows_before = pd.read_csv(tmp_path / "rows.csv")
  assert (rows_before.num_images == 40).any()
  monkeypatch.setattr(train_lib, "discard_checkpoint", real_discard)
  with caplog.at_level("INFO", logger="edgecnn"):
    trained = sweeps.edge_accuracy_sweep(ds, cloud, spec, config, log,
                                         **kwargs)
  assert trained == 0
  assert "removing the checkpoint left at" in caplog.text
  assert not run_dir.exists()
  pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "rows.csv"),
                                rows_before)


def test_sweeps_sharing_a_csv_skip_the_run_another_one_holds(setup, tmp_path):
  cloud, ds = setup
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40), seeds=(0,),
                          shared=(3,), labels="oracle")
  path = tmp_path / "rows.csv"
  other = results.ResultLog(path, {"experiment": "edge_accuracy"})
  held = [key for *_, key in sweeps.sweep_runs("fashion_mnist", spec)
          if key["num_images"] == 40 and not key["pretrained"]][0]
  assert other.claim(held)  # as a second sweep training EdgeCNN0-3 N=40 would
  log = results.ResultLog(path, {"experiment": "edge_accuracy"})
  plan = sweeps.plan_sweep("fashion_mnist", spec, log)
  assert plan["running"].tolist() == [False, False, False, True]
  trained = sweeps.edge_accuracy_sweep(ds, cloud, spec,
                                       train_lib.CONFIGS["quick"], log)
  assert trained == 3
  rows = pd.read_csv(path)
  done = set(zip(rows.model, rows.num_images))
  assert done == {("EdgeCNN1-3", 20), ("EdgeCNN0-3", 20), ("EdgeCNN1-3", 40)}
  assert [p.name for p in log.claims_dir.iterdir()] == [
      other.claim_path(held).name]  # its own claims released, the other kept
  other.release(held)
  assert sweeps.edge_accuracy_sweep(ds, cloud, spec,
                                    train_lib.CONFIGS["quick"], log) == 1


def test_labelers_sharing_a_cache_keep_each_others_labels(setup, tmp_path):
  cloud, ds = setup
  cache = tmp_path / "train_labels_ten_crop.npz"
  first = sweeps.CloudLabeler(cloud, ds, cache=cache)
  second = sweeps.CloudLabeler(cloud, ds, cache=cache)  # read the same empty state
  a, b = np.arange(0, 6), np.arange(6, 12)
  la, lb = first(a), second(b)  # the second write must not drop the first's
  fresh = sweeps.CloudLabeler(cloud, ds, cache=cache)
  assert (fresh.labels[a] == la).all() and (fresh.labels[b] == lb).all()
  assert (fresh.labels[12:] == -1).all()
  assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]


def test_sweep_progress_does_not_count_later_finished_runs_as_left(
    setup, tmp_path, caplog):
  cloud, ds = setup
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40), seeds=(0,),
                          shared=(3,), labels="oracle", models=(False,))
  log = results.ResultLog(tmp_path / "rows.csv",
                          {"experiment": "edge_accuracy"})
  *_, last = list(sweeps.sweep_runs("fashion_mnist", spec))[-1]
  log.append(last, [("test_accuracy_10crop", 0.5, "fraction")])
  with caplog.at_level(logging.INFO, logger="edgecnn"):
    assert sweeps.edge_accuracy_sweep(ds, cloud, spec,
                                      train_lib.CONFIGS["quick"], log) == 1
  assert "sweep: 1 of 2 runs done (0 of them skipped: done before or by " \
         "another sweep), 0 left" in caplog.text


def test_a_balanced_sweep_trains_a_balanced_start_and_random_uploads(
    setup, tmp_path, monkeypatch):
  cloud, ds = setup
  with pytest.raises(ValueError, match="one of \\['random', 'balanced'\\]. "
                     "Received: subset='stratified'"):
    sweeps.SweepSpec(preset="compact", num_images=(20,), seeds=(0,),
                     subset="stratified")
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 30), seeds=(0,),
                          shared=(3,), labels="oracle", models=(True,),
                          subset="balanced")
  assert spec.condition == "subset=balanced"
  splits = []
  measured = types.SimpleNamespace(
      test_accuracy_10crop=0.5, test_accuracy_center=0.5, epochs=1,
      wall_time_s=0.0, stop_reason="max_epochs")
  monkeypatch.setattr(
      sweeps.train_lib, "train_and_evaluate",
      lambda edge, dataset, split, *a, **k: splits.append(split) or measured)
  log = results.ResultLog(tmp_path / "rows.csv",
                          {"experiment": "edge_accuracy"})
  monkeypatch.setattr(sweeps, "train_metrics",
                      lambda result: [("test_accuracy_10crop", 0.5,
                                       "fraction")])
  assert sweeps.edge_accuracy_sweep(ds, cloud, spec,
                                    train_lib.CONFIGS["quick"], log) == 2
  y = ds.y_train
  first = np.concatenate([splits[0].train, splits[0].val])
  # The fake set's 40 images hold 4 of each class; N=20 takes 2 of each.
  assert np.bincount(y[first], minlength=10).tolist() == [2] * 10
  plain = data_lib.subset_order(len(y), seed=0)
  later = np.concatenate([splits[1].train, splits[1].val])
  np.testing.assert_array_equal(
      np.sort(np.setdiff1d(later, first)),
      np.sort(plain[~np.isin(plain, first)][:10]))
  assert sweeps.grid_uploads(y, spec).tolist() == sorted(
      np.setdiff1d(later, first).tolist())
  rows = pd.read_csv(tmp_path / "rows.csv", keep_default_na=False)
  assert set(rows.condition) == {"subset=balanced"}


def test_a_sweep_from_payloads_and_cached_labels_equals_one_from_the_model(
    setup, tmp_path):
  cloud, ds = setup
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40), seeds=(0,),
                          shared=(3, 5), models=(True,))
  config = train_lib.CONFIGS["quick"]
  cache = tmp_path / "train_labels_ten_crop.npz"
  empty = sweeps.CloudLabeler(None, ds, cache=tmp_path / "none.npz")
  with pytest.raises(sweeps.MissingCloudLabels, match="label_only"):
    sweeps.edge_accuracy_sweep(
        ds, {m: models.export_shared_layers(cloud, m) for m in (3, 5)}, spec,
        config, results.ResultLog(tmp_path / "x.csv", {"experiment": "e"}),
        labeler=empty)
  labeler = sweeps.CloudLabeler(cloud, ds, cache=cache)
  wanted, new = sweeps.label_grid(ds, spec, labeler)
  # N=40 adds 20 images to the initial 20; nothing else is labelled.
  assert (wanted, new) == (20, 20)
  assert int((labeler.labels >= 0).sum()) == 20
  assert sweeps.label_grid(ds, spec, labeler) == (20, 0)
  values = {}
  for name, source in (("model", cloud),
                       ("payloads", {m: models.export_shared_layers(cloud, m)
                                     for m in (3, 5)})):
    log = results.ResultLog(tmp_path / f"{name}.csv",
                            {"experiment": "edge_accuracy"})
    sweeps.edge_accuracy_sweep(
        ds, source, spec, config, log,
        labeler=sweeps.CloudLabeler(cloud if name == "model" else None, ds,
                                    cache=cache))
    rows = pd.read_csv(tmp_path / f"{name}.csv")
    kept = rows[~rows.metric.isin(["wall_time", "time_per_epoch",
                                   "train_images_per_s"])]
    values[name] = sorted(zip(kept.model, kept.num_images, kept.metric,
                              kept.value))
  assert len(values["model"]) > 20
  assert values["payloads"] == values["model"]


def test_payloads_of_different_clouds_or_missing_m_are_refused(setup):
  cloud, _ = setup
  other = models.build_cloud_cnn((CROP, CROP, 1), preset="compact", seed=1)
  mixed = {3: models.export_shared_layers(cloud, 3),
           5: models.export_shared_layers(other, 5)}
  with pytest.raises(models.PayloadError, match="different CloudCNNs"):
    sweeps.sweep_payloads(mixed, (3, 5))
  with pytest.raises(ValueError, match=r"No payload for m=\[10\]; received "
                     r"payloads for m=\[3, 5\]"):
    sweeps.sweep_payloads(mixed, (3, 10))
  payloads, digest = sweeps.sweep_payloads({3: mixed[3]}, (3,))
  assert digest == models.model_hash(cloud) and payloads == {3: mixed[3]}
  # The model names its teacher as its payloads do.
  assert sweeps.sweep_payloads(cloud, (3,)) == (payloads, digest)


def test_a_long_test_pass_logs_its_progress(setup, monkeypatch, caplog):
  cloud, ds = setup
  monkeypatch.setattr(eval_lib, "PROGRESS_INTERVAL_S", 0.0)
  with caplog.at_level(logging.INFO, logger="edgecnn"):
    eval_lib.predict_probs(cloud, ds.x_test, crop_size=CROP, chunk=10)
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith("test pass")]
  # 30 images in chunks of 10: a line before the second and the third.
  assert [l.split(" images/s")[0].rsplit(",", 1)[0] for l in lines] == [
      "test pass (ten_crop): 10 of 30 images",
      "test pass (ten_crop): 20 of 30 images"]
  assert all(l.endswith(" s") and "ends in ~" in l for l in lines)
