"""Every experiment binary, end to end, in its quick setting on tiny files."""

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from edgecnn import evaluate
from edgecnn import figures
from edgecnn import results
from tests.conftest import write_mnist_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *args, cwd):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


# The binaries that train, and so read --train_config (common.FLAG_GROUPS).
TRAINING = ("train_cloud", "edge_accuracy", "training_time", "throughput")


def untrained(common):
  """The workspace's flags for a binary that trains nothing: it refuses
  --train_config, which it would ignore."""
  return [a for a in common if not a.startswith("--train_config")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("exp")
  write_mnist_like(root / "data" / "mnist", n_train=120, n_test=20)
  common = [f"--data_dir={root / 'data'}", "--dataset=mnist",
            "--use_tfds=false", f"--workdir={root / 'work'}",
            "--train_config=quick"]
  run("train_cloud", *common, "--num_images=60", "--shared=3,5",
      "--keep_epochs=1",
      f"--results_csv={root / 'results' / 'train_cloud.csv'}", cwd=root)
  return root, common


def test_train_cloud_saves_model_payloads_and_rows(workspace):
  root, _ = workspace
  cloud = root / "work" / "cloud" / "mnist-compact-seed0"
  for name in ["build.json", "cloud.weights.h5", "shared_m3.bin",
               "shared_m5.bin", "train_result.json",
               "saved_model/cloud_cnn/1/saved_model.pb"]:
    assert (cloud / name).exists(), name
  rows = pd.read_csv(root / "results" / "train_cloud.csv")
  assert set(rows["metric"]) >= {"test_accuracy_10crop", "test_accuracy_center",
                                 "epochs", "wall_time"}
  assert (rows["model"] == "CloudCNN").all() and (rows["num_images"] == 60).all()
  assert set(rows["condition"]) == {"train_config=quick"}  # not the paper's
  flags_file = root / "results" / "train_cloud.mnist-compact-seed0.flags.json"
  saved = json.loads(flags_file.read_text())
  assert saved["num_images"] == 60 and saved["dataset"] == "mnist"
  assert "tt_check_filter" not in saved  # TensorFlow's own flags left out
  assert json.loads((cloud / "train_result.json").read_text())["epochs"] == 2


def test_train_cloud_keeps_the_weights_of_the_epochs_asked_for(workspace):
  # --keep_epochs=1 of a 2-epoch run: epoch 1's weights in a cloud
  # directory of their own, which crop_protocols tests like any other.
  root, common = workspace
  final = root / "work" / "cloud" / "mnist-compact-seed0"
  kept = root / "work" / "cloud" / "mnist-compact-seed0-epoch1"
  for name in ["build.json", "dataset.json", "cloud.weights.h5",
               "shared_m3.bin", "shared_m5.bin", "snapshot.json"]:
    assert (kept / name).exists(), name
  assert not (kept / "saved_model").exists()
  assert not (root / "work" / "cloud" / "mnist-compact-seed0-epoch2").exists()
  snapshot = json.loads((kept / "snapshot.json").read_text())
  history = json.loads((final / "train_result.json").read_text())["history"]
  assert snapshot["epoch"] == 1 and snapshot["of"] == str(final)
  assert snapshot["val_accuracy"] == pytest.approx(history[0]["val_accuracy"])
  from edgecnn import cloud_model
  first, last = (cloud_model.load_cloud(d).get_weights() for d in (kept, final))
  assert any(not (a == b).all() for a, b in zip(first, last))
  csv = root / "results" / "crops_epoch1.csv"
  run("crop_protocols", *untrained(common), f"--cloud_dir={kept}",
      f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv)
  assert len(rows) == 3 and rows["value"].between(0, 1).all()


def test_train_cloud_refuses_epochs_it_cannot_keep(workspace):
  root, common = workspace
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train_cloud", *common,
       f"--workdir={root / 'refused'}", "--keep_epochs=1,5"],
      cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert ("--keep_epochs=1,5: epoch(s) [5] come after the last one the run "
          "may train (max_epochs=2)") in proc.stderr
  assert not (root / "refused").exists()


def test_train_cloud_mixed_precision_row_and_float32_weights(workspace):
  root, common = workspace
  common = [a for a in common if not a.startswith("--workdir")]
  csv = root / "results" / "train_cloud_bf16.csv"
  run("train_cloud", *common, f"--workdir={root / 'work_bf16'}",
      "--num_images=60", "--shared=3", "--precision=mixed_bfloat16",
      "--max_epochs=1", "--lr_patience=1", f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv, keep_default_na=False)
  # Every departure from the paper's recipe is in the row, the schedule
  # override too; --lr_patience=1 is the quick config's own value.
  assert set(rows.condition) == {
      "train_config=quick;max_epochs=1;precision=mixed_bfloat16"}
  assert set(rows[rows.metric == "epochs"].value.astype(float)) == {1.0}
  acc = rows[rows.metric == "test_accuracy_10crop"].value.astype(float)
  assert 0.0 <= acc.iloc[0] <= 1.0
  import h5py
  cloud = root / "work_bf16" / "cloud" / "mnist-compact-seed0"
  dtypes = set()
  with h5py.File(cloud / "cloud.weights.h5") as f:
    f.visititems(lambda name, obj: dtypes.add(str(obj.dtype))
                 if isinstance(obj, h5py.Dataset) else None)
  assert "float32" in dtypes and not dtypes & {"bfloat16", "float16"}, dtypes


def test_edge_accuracy_writes_both_models_and_resumes(workspace):
  root, common = workspace
  csv = root / "results" / "edge_accuracy.csv"
  args = [*common, "--num_images=20,40", "--seeds=0", "--shared=3",
          f"--results_csv={csv}"]
  first = run("edge_accuracy", *args, cwd=root)
  skipped = "(0 of them skipped: done before or by another sweep)"
  assert f"sweep: 1 of 4 runs done {skipped}, 3 left" \
      in first.stderr
  assert f"sweep: 4 of 4 runs done {skipped}, 0 left" \
      in first.stderr
  rows = pd.read_csv(csv)
  acc = rows[rows.metric == "test_accuracy_10crop"]
  assert sorted(zip(acc.model, acc.num_images, acc.labels)) == [
      ("EdgeCNN0-3", 20, "true"), ("EdgeCNN0-3", 40, "true"),
      ("EdgeCNN1-3", 20, "true"), ("EdgeCNN1-3", 40, "cloud")]
  # Both weights tested; the default (last epoch's) is test_accuracy_*.
  best = rows[rows.metric == "best_epoch_test_accuracy_10crop"]
  last = rows[rows.metric == "last_epoch_test_accuracy_10crop"]
  assert len(best) == len(last) == 4
  assert last.value.tolist() == acc.value.tolist()
  assert best.value.between(0, 1).all()
  wrong = rows[rows.metric == "wrong_cloud_labels"]
  uploaded = rows[rows.metric == "uploaded_images"]
  assert uploaded.value.tolist() == [20]
  assert 0 <= wrong.value.iloc[0] <= 20
  assert (root / "work" / "cloud" / "mnist-compact-seed0" /
          "train_labels_ten_crop.npz").exists()
  proc = run("edge_accuracy", *args, cwd=root)
  assert len(pd.read_csv(csv)) == len(rows)  # all done: nothing retrained
  assert "training EdgeCNN" not in proc.stderr
  # --dry_run plans a larger grid from the CSV alone: no data, no cloud.
  plan = run("edge_accuracy", *common, "--num_images=20,40,60", "--seeds=0",
             "--shared=3", f"--results_csv={csv}", "--dry_run",
             "--cloud_dir=/nonexistent", "--data_dir=/nonexistent", cwd=root)
  assert "6 runs in this sweep, 4 already there, 2 to run." in plan.stdout
  lines = [l.split() for l in plan.stdout.splitlines()]
  assert ["0", "60", "EdgeCNN1-3", "EdgeCNN0-3", "?"] in lines
  assert "2 runs have no estimate" in plan.stdout
  assert "training EdgeCNN" not in plan.stderr
  assert len(pd.read_csv(csv)) == len(rows)
  assert "Note:" not in plan.stdout
  # N=40 alone is an initialisation phase on 40 true labels, not the
  # update phase of the 20,40 sweep already in the CSV: a run to do, named.
  plan = run("edge_accuracy", *common, "--num_images=40", "--seeds=0",
             "--shared=3", f"--results_csv={csv}", "--dry_run",
             "--cloud_dir=/nonexistent", "--data_dir=/nonexistent", cwd=root)
  assert "2 runs in this sweep, 1 already there, 1 to run." in plan.stdout
  assert ("Note: --num_images starts at N=40, so this sweep's EdgeCNN1 runs "
          "there are initialisation phases on 40 true labels") in plan.stdout
  assert "--num_images=20,40;" in plan.stdout
  # An ablation's CSV, empty so far, borrows the main grid's times (the
  # edge_accuracy.csv beside it) for the same model and N, marked ~.
  ablation_csv = csv.with_name("ablation_x.csv")
  plan = run("edge_accuracy", *common, "--num_images=20,40", "--seeds=1",
             "--shared=3", "--models=edgecnn1",
             f"--results_csv={ablation_csv}", "--dry_run",
             "--cloud_dir=/nonexistent", "--data_dir=/nonexistent", cwd=root)
  assert "2 runs in this sweep, 0 already there, 2 to run." in plan.stdout
  walls = rows[rows.metric == "wall_time"].set_index(["model", "num_images"])
  for n in (20, 40):
    est = float(walls.loc[("EdgeCNN1-3", n), "value"]) / 60
    assert ["1", str(n), "EdgeCNN1-3", f"~{est:.1f}"] in [
        l.split() for l in plan.stdout.splitlines()]
  assert ("2 runs have no time of their own for mnist in ablation_x.csv; "
          "their estimate is the same run's time on mnist in "
          "edge_accuracy.csv") in plan.stdout
  assert not ablation_csv.exists()
  # A run another sweep is training now is marked, with where its claim is.
  holder = results.ResultLog(csv, {"experiment": "edge_accuracy"})
  key = {"dataset": "mnist", "preset": "compact",
         "model": "EdgeCNN0-3", "num_shared": 3, "pretrained": False,
         "labels": "true", "num_images": 60, "seed": 0}
  assert holder.claim(key)
  plan = run("edge_accuracy", *common, "--num_images=20,40,60", "--seeds=0",
             "--shared=3", f"--results_csv={csv}", "--dry_run",
             "--cloud_dir=/nonexistent", "--data_dir=/nonexistent", cwd=root)
  holder.release(key)
  lines = [l.split() for l in plan.stdout.splitlines()]
  assert ["0", "60", "EdgeCNN1-3", "EdgeCNN0-3*", "?"] in lines
  assert ("1 runs are being trained by another sweep now (claims in "
          f"{csv}.claims)") in plan.stdout
  # The head ablation is a separate condition: trained, not taken for done.
  run("edge_accuracy", *common, "--num_images=20", "--seeds=0",
      "--shared=3", "--models=edgecnn1", "--head_pool=paper",
      f"--results_csv={csv}", cwd=root)
  after = pd.read_csv(csv, keep_default_na=False)
  ablation = after[after.condition == "head_pool=paper"]
  assert sorted(set(zip(ablation.model, ablation.num_images))) == [
      ("EdgeCNN1-3", 20)]
  assert "test_accuracy_10crop" in set(ablation.metric)
  assert len(after) - len(ablation) == len(rows)
  # Fine-tuning the shared layers is its own condition too; EdgeCNN0 has
  # nothing frozen to fine-tune, so asking for it is refused before training.
  refused = subprocess.run(
      [sys.executable, "-m", "experiments.edge_accuracy", *common,
       "--num_images=20", "--seeds=0", "--shared=3", "--train_shared",
       f"--results_csv={csv}"], cwd=root, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
      timeout=300)
  assert refused.returncode != 0
  assert "--train_shared with --models=both" in refused.stderr
  assert "--models=edgecnn1" in refused.stderr
  # No run has trained its shared layers yet: --dry_run estimates from the
  # frozen runs, marked ~ and named "without shared=trained".
  plan = run("edge_accuracy", *common, "--num_images=20,40", "--seeds=0",
             "--shared=3", "--models=edgecnn1", "--train_shared",
             f"--results_csv={csv}", "--dry_run",
             "--cloud_dir=/nonexistent", "--data_dir=/nonexistent", cwd=root)
  assert "2 runs in this sweep, 0 already there, 2 to run." in plan.stdout
  frozen_walls = rows[(rows.metric == "wall_time")
                      & (rows.model == "EdgeCNN1-3")].set_index("num_images")
  for n in (20, 40):
    est = float(frozen_walls.loc[n, "value"]) / 60
    assert ["0", str(n), "EdgeCNN1-3", f"~{est:.1f}"] in [
        l.split() for l in plan.stdout.splitlines()]
  assert "time on mnist without shared=trained" in plan.stdout
  # So does a class-balanced initialisation phase (another subset of
  # images, its own condition).
  plan = run("edge_accuracy", *common, "--num_images=20,40", "--seeds=0",
             "--shared=3", "--subset=balanced", f"--results_csv={csv}",
             "--dry_run", "--cloud_dir=/nonexistent",
             "--data_dir=/nonexistent", cwd=root)
  assert "4 runs in this sweep, 0 already there, 4 to run." in plan.stdout
  assert "time on mnist without subset=balanced" in plan.stdout
  run("edge_accuracy", *common, "--num_images=20", "--seeds=0",
      "--shared=3", "--models=edgecnn1", "--train_shared",
      f"--results_csv={csv}", cwd=root)
  after = pd.read_csv(csv, keep_default_na=False)
  tuned = after[after.condition == "shared=trained"].set_index("metric")
  frozen = after[(after.condition == "") & (after.model == "EdgeCNN1-3")
                 & (after.num_images == 20)].set_index("metric")
  assert tuned.loc["frozen_params", "value"] == 0
  assert (tuned.loc["trainable_params", "value"]
          == frozen.loc["trainable_params", "value"]
          + frozen.loc["frozen_params", "value"])
  assert 0 <= tuned.loc["test_accuracy_10crop", "value"] <= 1
  assert len(after) - len(tuned) - len(ablation) == len(rows)
  # The flags file holds the last run only; the history holds every command
  # that wrote to the CSV (dry runs write nothing), oldest first.
  flags_file = root / "results" / "edge_accuracy.mnist-compact.flags.json"
  last_flags = json.loads(flags_file.read_text())
  assert (last_flags["train_shared"], last_flags["head_pool"]) == (True, "cloud")
  history = results.read_invocations(
      root / "results" / "edge_accuracy.invocations.jsonl")
  commands = [h["command"] for h in history]
  assert len(commands) == 4 and commands[0] == commands[1], commands
  assert "--head_pool" not in commands[0] and "--num_images=20,40" in commands[0]
  assert commands[2].startswith("python -m experiments.edge_accuracy ")
  assert "--head_pool=paper" in commands[2]
  assert [h["flags"]["head_pool"] for h in history][0] != "paper"
  assert "--train_shared" in commands[3] and history[3]["flags"]["train_shared"]
  # Another schedule into the same CSV is refused before it trains: its
  # rows would not say so, and it would take these runs for done.
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.edge_accuracy", *args,
       "--max_epochs=1", "--num_images=20,40,60"], cwd=root, env=env,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert (f"{csv} holds rows of mnist-compact from a command with another "
          "setting (max_epochs=2 there, 1 here)") in proc.stderr
  assert "--results_csv=results/ablation_<what>.csv" in proc.stderr
  assert len(pd.read_csv(csv)) == len(after)
  assert len(results.read_invocations(
      root / "results" / "edge_accuracy.invocations.jsonl")) == 4


def test_edge_accuracy_runs_from_a_cloud_directory_without_weights(workspace):
  root, common = workspace
  full = root / "work" / "cloud" / "mnist-compact-seed0"
  light = root / "light"
  light.mkdir()
  for f in full.iterdir():
    if f.is_file() and f.name not in ("cloud.weights.h5",
                                      "train_labels_ten_crop.npz"):
      shutil.copy(f, light)
  args = [*common, "--num_images=20,60", "--seeds=1", "--shared=3",
          "--models=edgecnn1"]
  csv = root / "results" / "light.csv"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
  refused = subprocess.run(
      [sys.executable, "-m", "experiments.edge_accuracy", *args,
       f"--cloud_dir={light}", f"--results_csv={csv}"], cwd=root, env=env,
      capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0
  assert (f"{light} holds no CloudCNN weights (cloud.weights.h5), and its "
          "label cache train_labels_ten_crop.npz lacks 40 of the 40 labels"
          ) in refused.stderr
  # A user error: one line naming the binary, exit 1, no traceback.
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert "edge_accuracy: error: " in refused.stderr
  assert not csv.exists()  # refused before any training
  # An oracle sweep needs no cloud labels: --label_only is refused there,
  # before any labelling.
  cache = full / "train_labels_ten_crop.npz"
  cached = cache.read_bytes() if cache.exists() else None
  oracle = subprocess.run(
      [sys.executable, "-m", "experiments.edge_accuracy", *args,
       "--label_only", "--labels=oracle", f"--cloud_dir={full}",
       f"--results_csv={csv}"], cwd=root, env=env, capture_output=True,
      text=True, timeout=600)
  assert oracle.returncode == 1
  assert "--label_only with --labels=oracle" in oracle.stderr
  assert "Drop --labels=oracle" in oracle.stderr
  assert (cache.read_bytes() if cache.exists() else None) == cached
  labelled = run("edge_accuracy", *args, "--label_only",
                 f"--results_csv={csv}", cwd=root)
  # Some may be cached by the other tests' sweeps (seed 0 shares images).
  new, cached = map(int, re.search(
      r"upload 40 images; (\d+) newly labelled by CloudCNN, (\d+) were "
      r"cached", labelled.stdout).groups())
  assert new + cached == 40 and new > 0
  again = run("edge_accuracy", *args, "--label_only", cwd=root)
  assert "upload 40 images; 0 newly labelled by CloudCNN, 40 were cached" \
      in again.stdout
  assert not csv.exists()
  shutil.copy(full / "train_labels_ten_crop.npz", light)
  proc = run("edge_accuracy", *args, f"--cloud_dir={light}",
             f"--results_csv={csv}", cwd=root)
  assert "holds no CloudCNN weights: EdgeCNN1 from its payloads" in proc.stderr
  rows = pd.read_csv(csv)
  acc = rows[rows.metric == "test_accuracy_10crop"]
  assert sorted(zip(acc.model, acc.num_images)) == [("EdgeCNN1-3", 20),
                                                    ("EdgeCNN1-3", 60)]
  assert rows[rows.metric == "uploaded_images"].value.tolist() == [40]


def test_training_time_uses_paper_sample_count(workspace):
  root, common = workspace
  csv = root / "results" / "training_time.csv"
  run("training_time", *common, "--seeds=0", "--shared=3",
      f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv)
  times = rows[rows.metric == "wall_time"]
  assert sorted(times.model) == ["EdgeCNN0-3", "EdgeCNN1-3"]
  assert (times.num_images == 100).all() and (times.value > 0).all()
  assert (rows.experiment == "training_time").all()
  # --dry_run plans from the CSV and trains nothing, here as in
  # edge_accuracy (it once ran the sweep, beside whatever held the cores).
  plan = run("training_time", *common, "--seeds=0,1", "--shared=3",
             f"--results_csv={csv}", "--dry_run", "--data_dir=/nonexistent",
             cwd=root)
  assert "4 runs in this sweep, 2 already there, 2 to run." in plan.stdout
  assert ["1", "100", "EdgeCNN1-3", "EdgeCNN0-3"] == \
      [l.split() for l in plan.stdout.splitlines()
       if l.split()[:2] == ["1", "100"]][0][:4]
  assert "training EdgeCNN" not in plan.stderr
  assert len(pd.read_csv(csv)) == len(rows)


def test_inference_time_rows(workspace):
  root, common = workspace
  csv = root / "results" / "inference_time.csv"
  run("inference_time", *untrained(common), "--shared=3,5", "--num_test_images=10",
      "--repeats=2", f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv)
  per_image = rows[rows.metric == "inference_ms_per_image"]
  assert sorted(per_image.model) == ["CloudCNN", "EdgeCNN1-3", "EdgeCNN1-5"]
  assert (per_image.value > 0).all()


def test_export_saved_model_reloads_in_fresh_process(workspace):
  root, common = workspace
  proc = run("export_saved_model", *untrained(common), "--model=edge", "--num_shared=3",
             f"--base_dir={root / 'serving'}", "--check_images=8", cwd=root)
  assert (root / "serving" / "edgecnn" / "1" / "saved_model.pb").exists()
  assert "fresh-process reload matches" in proc.stderr


def test_stray_arguments_are_rejected(workspace):
  root, common = workspace
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run([sys.executable, "-m", "experiments.edge_accuracy",
                         "oops"], cwd=root, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0 and "Unexpected arguments: ['oops']" in proc.stderr


@pytest.mark.parametrize("module,args,message", [
    ("train_cloud", ["--data_dir={root}/none"], "Could not load dataset 'mnist'. "
     "Tried: ['{root}/none'"),
    ("edge_accuracy", ["--cloud_dir={root}/nowhere"],
     "No cloud directory {root}/nowhere: train a CloudCNN"),
    ("inference_time", ["--workdir={root}/empty", "--num_test_images=8"],
     "{root}/empty/cloud/mnist-compact-seed0 holds no saved CloudCNN"),
])
def test_user_errors_are_one_line_without_a_traceback(workspace, module, args,
                                                      message):
  root, common = workspace
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}",
       *(common if module in TRAINING else untrained(common)),
       *(a.format(root=root) for a in args),
       f"--results_csv={root / 'results' / 'refused.csv'}"],
      cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert f"{module}: error: {message.format(root=root)}" in proc.stderr
  assert not (root / "results" / "refused.csv").exists()


@pytest.mark.parametrize("module,listed,unlisted", [
    ("train_cloud", "--dataset --preset --max_epochs --results_csv --seed "
     "--strategy", "--cloud_seed --cloud_dir"),
    ("edge_accuracy", "--dataset --data_dir --cloud_dir --train_config "
     "--max_epochs --kernel_initializer --num_images --dry_run", ""),
    ("training_time", "--dataset --cloud_dir --max_epochs --num_images "
     "--dry_run --seeds", ""),
    ("inference_time", "--dataset --preset --cloud_dir --results_csv",
     "--max_epochs --train_config"),
    ("export_saved_model", "--dataset --preset --cloud_dir --base_dir",
     "--max_epochs --results_csv"),
    ("crop_protocols", "--dataset --preset --cloud_dir --results_csv",
     "--max_epochs"),
    ("throughput", "--dataset --presets --train_config --results_csv",
     "--cloud_dir --use_tfds"),
    ("response_time", "--dataset --data_dir --preset --cloud_dir", "--max_epochs"),
    ("load_test", "--dataset --data_dir --preset --cloud_dir", "--max_epochs"),
    ("main_job", "--dataset --preset --cloud_dir --edges --retrain_threshold",
     "--train_config"),
    ("plot_figures", "--results_dir --out_dir --refresh_docs", "--dataset"),
    ("feature_scale", "--dataset --cloud_dir --shared --num_images --seed "
     "--results_csv", "--max_epochs --train_config"),
])
def test_help_lists_the_flags_the_binary_reads(module, listed, unlisted):
  # --help, not only --helpfull: the shared flags of experiments/common.py
  # are listed where the binary reads them (common.FLAG_GROUPS), absl's and
  # TensorFlow's own are not. And it answers without importing TensorFlow
  # or Keras (seconds on two cores): the library loads on first use
  # (cli.lazy_import), flag choices come from edgecnn.config.
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run([sys.executable, "-X", "importtime", "-m",
                         f"experiments.{module}", "--help"], env=env,
                        capture_output=True, text=True, timeout=300)
  shown = set(re.findall(r"^  --(?:\[no\])?(\w+)", proc.stdout, re.M))
  assert {f[2:] for f in listed.split()} <= shown, proc.stdout
  assert not {f[2:] for f in unlisted.split()} & shown
  assert not {"logtostderr", "verbosity", "only_check_args"} & shown
  imported = set(re.findall(r"^import time:.*\|\s*([\w.]+)$", proc.stderr,
                            re.M))
  assert "edgecnn.config" in imported or module == "plot_figures"
  assert not {"tensorflow", "keras"} & imported


@pytest.mark.parametrize("module,args,unread", [
    ("throughput", ["--preset=paper"], "--preset"),
    ("inference_time", ["--train_config=quick", "--max_epochs=3"],
     "--max_epochs, --train_config"),
])
def test_shared_flags_a_binary_does_not_read_are_refused(tmp_path, module,
                                                         args, unread):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  csv = tmp_path / "r.csv"
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}",
                         "--dataset=mnist", *args, f"--results_csv={csv}"],
                        cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert (f"{module} does not read {unread}: it would be ignored. Drop it; "
          f"{module} --help lists the flags it reads.") in proc.stderr
  assert not csv.exists() and not list(tmp_path.glob("*.json"))


def test_key_flags_names_groups_and_refuses_unknown_names():
  from experiments import common
  assert common.key_flags("data", "dataset", "results") == [
      "dataset", "data_dir", "use_tfds", "results_csv"]
  with pytest.raises(KeyError, match="'datasets'.*data, cloud"):
    common.key_flags("data", "datasets")


def test_throughput_rows(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  csv = tmp_path / "t.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.throughput", "--dataset=mnist",
       "--presets=compact", "--shared=3", "--steps=1", "--repeats=1",
       "--precisions=float32,mixed_bfloat16",
       f"--results_csv={csv}"], env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = pd.read_csv(csv, keep_default_na=False)
  speed = rows[rows.metric == "train_images_per_s"]
  assert sorted(zip(speed.model, speed.condition)) == [
      ("CloudCNN", ""), ("CloudCNN", "precision=mixed_bfloat16"),
      ("EdgeCNN1-3", ""), ("EdgeCNN1-3", "precision=mixed_bfloat16")]
  assert (speed.value.astype(float) > 0).all()
  frozen = rows[(rows.metric == "frozen_params") & (rows.model == "EdgeCNN1-3")]
  assert frozen.value.astype(int).tolist() == [18816, 18816]
  # A bad policy is refused before anything beside the CSV is rewritten.
  flags_file = tmp_path / "t.mnist.flags.json"
  before = flags_file.read_text()
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.throughput", "--dataset=mnist",
       "--precisions=fp16", f"--results_csv={csv}"], env=env,
      capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "unknown policy 'fp16'" in bad.stderr
  assert flags_file.read_text() == before


def test_feature_scale_rows_name_the_cloud_and_are_measured_once(workspace):
  root, common = workspace
  csv = root / "results" / "feature_scale.csv"
  run("feature_scale", *untrained(common), "--shared=3,5", "--num_images=40",
      f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv)
  assert sorted(set(rows.metric)) == ["initial_loss", "shared_output_max",
                                      "shared_output_mean", "shared_output_rms"]
  assert sorted(set(rows.num_shared)) == [3, 5] and len(rows) == 8
  assert (rows.num_images == 40).all()
  (condition,) = set(rows.condition)
  assert re.fullmatch(r"cloud=mnist-compact-seed0@[0-9a-f]{12}", condition)
  value = rows.set_index(["num_shared", "metric"]).value
  for m in (3, 5):  # ReLU outputs: non-negative, the max above the rms
    assert 0 <= value[m, "shared_output_mean"] <= value[m, "shared_output_rms"]
    assert value[m, "shared_output_rms"] <= value[m, "shared_output_max"]
    assert value[m, "initial_loss"] > 0
  again = run("feature_scale", *untrained(common), "--shared=3,5",
              "--num_images=40", f"--results_csv={csv}", cwd=root)
  assert "already in" in again.stderr and len(pd.read_csv(csv)) == 8


def test_crop_protocols_rows(workspace):
  root, common = workspace
  csv = root / "results" / "crop_protocols.csv"
  run("crop_protocols", *untrained(common), f"--results_csv={csv}", cwd=root)
  rows = figures.load(csv.parent, csv.stem)  # the commit read as text
  assert sorted(rows.metric) == ["test_accuracy_center", "test_accuracy_five_crop",
                                 "test_accuracy_ten_crop_with_mirrors"]
  assert rows.value.between(0, 1).all()
  flags_file = root / "results" / "crop_protocols.mnist-compact.flags.json"
  assert json.loads(flags_file.read_text())["dataset"] == "mnist"
  again = run("crop_protocols", *untrained(common), f"--results_csv={csv}", cwd=root)
  assert "already in" in again.stderr
  assert len(pd.read_csv(csv)) == 3  # measured once
  # The invocation is in the history with its command line.
  (record,) = results.read_invocations(  # the rerun had nothing to do
      root / "results" / "crop_protocols.invocations.jsonl")
  assert record["command"].startswith(
      "python -m experiments.crop_protocols --data_dir=")
  assert f"--results_csv={csv}" in record["command"]
  assert record["name"] == "mnist-compact"
  assert record["flags"]["dataset"] == "mnist"
  assert record["commit"] == rows.commit.iloc[0]
  # ... and the machine, which the last bits of its floats depend on.
  here = evaluate.machine_description()
  assert {k: record["machine"][k] for k in ("cpu", "cpu_isa", "tensorflow")} \
      == {k: here[k] for k in ("cpu", "cpu_isa", "tensorflow")}


def test_cloud_rows_name_the_seed_and_preset_of_the_cloud_dir(workspace):
  # With --cloud_dir the defaults of --cloud_seed and --preset would label a
  # seed-7 CloudCNN seed 0; its build.json says which it is.
  root, common = workspace
  other = root / "work" / "cloud" / "mnist-compact-seed7"
  shutil.copytree(root / "work" / "cloud" / "mnist-compact-seed0", other,
                  ignore=shutil.ignore_patterns("saved_model"))
  build = json.loads((other / "build.json").read_text())
  (other / "build.json").write_text(json.dumps({**build, "seed": 7}))
  csv = root / "results" / "crops_seed7.csv"
  run("crop_protocols", *untrained(common), f"--cloud_dir={other}",
      f"--results_csv={csv}", cwd=root)
  rows = pd.read_csv(csv)
  assert len(rows) == 3
  assert set(rows.seed) == {7} and set(rows.preset) == {"compact"}
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  refused = root / "results" / "crops_refused.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.crop_protocols", *untrained(common),
       f"--cloud_dir={other}", "--cloud_seed=0", f"--results_csv={refused}"],
      cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert (f"--cloud_seed=0 contradicts {other}, whose CloudCNN was built with "
          "seed 7") in proc.stderr
  assert not refused.exists()


def test_schedule_flags_override_the_named_config():
  from absl import app
  from absl import flags
  from absl.testing import flagsaver
  from experiments import common
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  assert common.train_config().lr_patience == 10
  assert common.train_config().augment
  assert not common.train_config().restore_best
  with flagsaver.flagsaver(lr_patience=5, max_epochs=7, augment=False,
                           tie_break_loss=False, restore_best=True):
    config = common.train_config()
    assert (config.lr_patience, config.max_epochs, config.augment,
            config.tie_break_loss, config.restore_best) == (5, 7, False,
                                                            False, True)
  assert common.train_config().flip
  with flagsaver.flagsaver(flip=False, dataset="fashion_mnist"):
    assert not common.train_config().flip
    assert common.schedule_condition() == ["flip=False"]
    with flagsaver.flagsaver(augment=False):
      with pytest.raises(app.UsageError, match="--noflip changes nothing "
                         "with --noaugment"):
        common.train_config()
    with flagsaver.flagsaver(dataset="mnist"):
      with pytest.raises(app.UsageError, match="--noflip changes nothing on "
                         "--dataset=mnist, which is never mirrored"):
        common.train_config()
  with pytest.raises(flags.IllegalFlagValueError):
    flags.FLAGS.lr_patience = 0


def test_a_sweep_on_another_teacher_or_schedule_is_refused(tmp_path):
  # The history save_flags writes is what refuse_mixed_history reads: a
  # record of another CloudCNN (its hash) or config for the same
  # dataset-preset refuses; another dataset, or a record older than the
  # fact, does not.
  from absl import flags
  from absl.testing import flagsaver
  from experiments import cli
  from experiments import common
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  log = results.ResultLog(tmp_path / "edge.csv", {"experiment": "x"})
  common.save_flags(log, "mnist-compact")  # older: no hash recorded
  common.refuse_mixed_history(log, "mnist-compact", facts={"cloud_hash": "a"})
  common.save_flags(log, "mnist-compact", facts={"cloud_hash": "a"})
  common.save_flags(log, "cifar10-compact", facts={"cloud_hash": "c"})
  common.refuse_mixed_history(log, "mnist-compact", facts={"cloud_hash": "a"},
                              also=("kernel_initializer",))
  with pytest.raises(cli.UserError, match=re.escape(
      "edge.csv holds rows of mnist-compact from a command with another "
      "setting (cloud_hash=a there, b here)")):
    common.refuse_mixed_history(log, "mnist-compact",
                                facts={"cloud_hash": "b"})
  with flagsaver.flagsaver(train_config="robust",
                           kernel_initializer="glorot_uniform"):
    with pytest.raises(cli.UserError) as refused:
      common.refuse_mixed_history(log, "mnist-compact",
                                  also=("kernel_initializer",),
                                  facts={"cloud_hash": "a"})
    message = str(refused.value)
    assert "train_config=paper there, robust here; warmup_steps=0 there" \
        in message
    assert "--kernel_initializer=he_normal there, glorot_uniform here" \
        in message
    assert "cloud_hash" not in message
  common.refuse_mixed_history(log, "cifar10-compact", facts={"cloud_hash": "c"})
  # A record from before --flip existed ran with mirrors, the default: it
  # agrees with a run that mirrors and refuses one that does not.
  record = json.loads(results.invocations_path(log.path).read_text()
                      .splitlines()[-1])
  del record["flags"]["flip"]
  older = results.ResultLog(tmp_path / "older.csv", {"experiment": "x"})
  results.invocations_path(older.path).write_text(json.dumps(record) + "\n")
  common.refuse_mixed_history(older, "cifar10-compact")
  with flagsaver.flagsaver(flip=False):
    with pytest.raises(cli.UserError, match="flip=True there, False here"):
      common.refuse_mixed_history(older, "cifar10-compact")
  assert not log.path.exists()  # refusals and checks write no row


def test_lazy_import_is_for_edgecnn_modules_only():
  from experiments import cli
  with pytest.raises(ValueError, match="lazy_import is for edgecnn's modules; "
                     "received 'keras'"):
    cli.lazy_import("keras")
  with pytest.raises(ModuleNotFoundError, match="edgecnn.nowhere"):
    cli.lazy_import("edgecnn.nowhere")
