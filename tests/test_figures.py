"""Notebooks and plot_figures on a small fixture set of CSVs in the real schema."""

import json
import os
import pathlib
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from edgecnn import figures
from edgecnn import results

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The key columns of a Fashion-MNIST EdgeCNN1-3 run, less N, seed and labels.
FASHION_EDGECNN1_3 = {"dataset": "fashion_mnist", "preset": "compact",
                      "model": "EdgeCNN1-3", "num_shared": 3,
                      "pretrained": True}


def edge_log(directory, stem="edge_accuracy"):
  """An edge_accuracy ResultLog at <directory>/<stem>.csv."""
  return results.ResultLog(pathlib.Path(directory) / f"{stem}.csv",
                           {"experiment": "edge_accuracy", "device": "CPU",
                            "threads": 2, "commit": "abc"})


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("results")
  common = {"device": "CPU", "threads": 2, "commit": "abc"}
  edge = results.ResultLog(root / "edge_accuracy.csv",
                           {"experiment": "edge_accuracy", **common})
  for dataset in ("mnist", "fashion_mnist", "cifar10"):
    for seed in (0, 1):
      for n in (120, 1200):
        for m in (3, 5, 10):
          for pretrained in (True, False):
            edge.append({"dataset": dataset, "preset": "compact",
                         "model": f"EdgeCNN{int(pretrained)}-{m}",
                         "num_shared": m, "pretrained": pretrained,
                         "labels": "true", "num_images": n, "seed": seed},
                        [("test_accuracy_10crop",
                          0.6 + 0.1 * pretrained + n / 10000 + seed / 100,
                          "fraction"), ("wall_time", 3.0, "s")])
  # A CIFAR-10 ablation of the same runs (the notebook's comparison cell);
  # its second CSV is left out, so the notebook's missing-CSV path runs too.
  robust = edge_log(root, "ablation_cifar_robust_edges")
  for seed in (0, 1):
    robust.append({"dataset": "cifar10", "preset": "compact",
                   "model": "EdgeCNN1-3", "num_shared": 3, "pretrained": True,
                   "labels": "true", "num_images": 120, "seed": seed},
                  [("test_accuracy_10crop", 0.75 + seed / 100, "fraction")])
  # One run on the teacher's labels and the same run on true labels (the
  # notebook's cloud-vs-true comparison at N=60,000).
  for stem, labels, accuracy in (("ablation_cloud_long_edges", "cloud", 0.93),
                                 ("ablation_cloud_long_oracle_edges", "oracle",
                                  0.935)):
    edge_log(root, stem).append(
        {**FASHION_EDGECNN1_3, "labels": labels, "num_images": 60000,
         "seed": 2},
        [("test_accuracy_10crop", accuracy, "fraction"),
         ("wrong_cloud_labels", 2090 if labels == "cloud" else 0, "images")])
  # The same N=60,000 run with its shared layers trained (the notebook's
  # frozen-vs-trained comparison).
  edge_log(root, "ablation_train_shared_long_edges").append(
      {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 60000,
       "seed": 2, "condition": "shared=trained"},
      [("test_accuracy_10crop", 0.939, "fraction")])
  # Ten seeds at N=120 (the notebook's "Ten seeds" cells); the stopping-rule
  # teacher's CSV is left out, so its missing-CSV message shows.
  seeds = edge_log(root, "seeds_n120_edges")
  for seed in range(10):
    for pretrained in (True, False):
      seeds.append({"dataset": "fashion_mnist", "preset": "compact",
                    "model": f"EdgeCNN{int(pretrained)}-3", "num_shared": 3,
                    "pretrained": pretrained, "labels": "true",
                    "num_images": 120, "seed": seed},
                   [("test_accuracy_10crop",
                     0.70 + 0.05 * pretrained + seed / 1000, "fraction")])
  tt = results.ResultLog(root / "training_time.csv",
                         {"experiment": "training_time", **common})
  it = results.ResultLog(root / "inference_time.csv",
                         {"experiment": "inference_time", **common})
  for m in (3, 10):
    for pretrained in (True, False):
      tt.append({"dataset": "mnist", "preset": "compact",
                 "model": f"EdgeCNN{int(pretrained)}-{m}", "num_shared": m,
                 "pretrained": pretrained, "labels": "true", "num_images": 100,
                 "seed": 0}, [("wall_time", 10 - 5 * pretrained, "s")])
  for name, ms in (("EdgeCNN1-3", 0.2), ("EdgeCNN1-10", 0.4), ("CloudCNN", 0.5)):
    it.append({"dataset": "cifar10", "preset": "compact", "model": name,
               "num_shared": 3, "pretrained": True, "labels": "",
               "num_images": 2000, "seed": 0},
              [("inference_ms_per_image", ms, "ms")])
  rt = results.ResultLog(root / "response_time.csv",
                         {"experiment": "response_time", **common})
  for link in ("lte", "wifi"):
    for kb in (60, 512):
      for model, factor in (("EdgeCNN1-3", 1.0), ("CloudCNN", 2.0)):
        rt.append({"dataset": "fashion_mnist", "preset": "compact",
                   "model": model, "num_shared": 3, "pretrained": True,
                   "labels": "", "num_images": 5, "seed": 0,
                   "condition": f"link={link};size_kb={kb};emulation=proxy;"
                                "image=png"},
                  [(f"{m}_median", factor * kb / 1000, "s")
                   for m in ("response_time", "upload_time", "inference_time",
                             "download_time")] +
                  [(f"{m}_spread", 0.01, "s")
                   for m in ("response_time", "upload_time", "inference_time",
                             "download_time")])
  pd.DataFrame([
      {"edge_id": e, "num_shared": m, "model_version": v, "deployed": True,
       "num_labels": 108 + 200 * (v - 1), "num_cloud_labels": 200 * (v - 1),
       "wrong_cloud_labels": 10 * (v - 1), "val_accuracy": 0.7 + v / 100,
       "test_accuracy_10crop": 0.7 + v / 50,
       "test_accuracy_center": 0.69 + v / 50,
       "edgecnn0_test_accuracy_10crop": 0.6 + v / 50,
       "cloud_test_accuracy_10crop": 0.9, "train_time_s": 5.0,
       "test_images": 2000, "dataset": "fashion_mnist", "preset": "compact",
       "seed": 0, "commit": "abc", "timestamp": "2026-11-26T00:00:00+00:00"}
      for e, m in (("edge-m3", 3), ("edge-m10", 10)) for v in (1, 2, 3)
  ]).to_csv(root / "main_job.csv", index=False)
  return root


def test_stored_notebooks_have_no_outputs():
  assert NOTEBOOKS
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_on_fixture(path, results_dir, monkeypatch):
  from nbclient import NotebookClient
  # The kernel is a child process: give it this checkout's edgecnn, installed or not.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  nb = nbformat.read(path, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  params[0].source = f"RESULTS_DIR = {str(results_dir)!r}"
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT / "notebooks")}}
                 ).execute()
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "the notebook drew nothing"
  if path.name == "accuracy.ipynb":
    text = "".join(o.get("data", {}).get("text/markdown", "")
                   for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    # Seeds 0 and 1: 71.20 and 72.20 in the main grid, 75.00 and 76.00 here.
    assert ("| EdgeCNN1-3 | 120 | 71.70±0.71 | 75.50±0.71 | +3.80±0.00 "
            "(n=2; +3.80, +3.80) |") in text
    assert "No ablation_cifar_cloud_long_robust_edges.csv in" in text
    # Seed 2 at N=60,000: 93.00 on the teacher's labels, 93.50 on true ones.
    assert "| EdgeCNN1-3 | 60000 | 93.00 | 93.50 | +0.50 (n=1; +0.50) |" in text
    # Trained shared layers: 93.90 against the frozen 93.00.
    assert "| EdgeCNN1-3 | 60000 | 93.00 | 93.90 | +0.90 (n=1; +0.90) |" in text
    assert "No ablation_train_shared_edges.csv in" in text
    # Ten seeds, EdgeCNN1-3 75.00-75.90, EdgeCNN0-3 70.00-70.90: +5.00 each.
    assert ("| 120 | 75.45±0.30 | 75.77 | 70.45±0.30 | 58.61 | +5.00±0.00 "
            "(n=10) | +17.16 |") in text
    assert "No seeds_n120_long_edges.csv yet." in text
    for stem in ("seeds_grid_long_edges", "seeds_grid_edges"):
      assert f"No {stem}.csv yet." in text
    assert "No ablation_robust_n120_edges.csv in" in text
    assert ("No seeds_grid_long_edges.csv or seeds_grid_long_s1_edges.csv "
            "in") in text
    for stem in ("ablation_balanced_n120_long_edges",
                 "ablation_balanced_grid_long_edges"):
      assert f"No {stem}.csv yet." in text
    assert "No ablation_balanced_n120_edges.csv in" in text


def test_plot_command_writes_every_png(results_dir, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  out = tmp_path / "figures"
  subprocess.run([sys.executable, "-m", "experiments.plot_figures",
                  f"--results_dir={results_dir}", f"--out_dir={out}"],
                 check=True, env=env, capture_output=True, timeout=300)
  for name in figures.FIGURES:
    png = out / f"{name}.png"
    assert png.exists() and png.stat().st_size > 5000, name
  tables = (out / "tables.md").read_text()
  assert "EdgeCNN1-3" in tables and "[83.12]" in tables  # paper, MNIST N=120
  assert "±" in tables
  assert figures.bar_table(results_dir, "fashion_mnist") in tables


def test_plot_command_refuses_a_results_dir_with_nothing_to_draw(tmp_path):
  # A mistyped --results_dir used to draw figures of the paper's values alone.
  env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.csv").write_text("a,b\n1,2\n")
  for results, why in ((tmp_path / "nope", "is not a directory"),
                       (tmp_path / "empty", "holds none of the result CSVs")):
    out = tmp_path / "figures"
    run = subprocess.run(
        [sys.executable, "-m", "experiments.plot_figures",
         f"--results_dir={results}", f"--out_dir={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert str(results) in run.stderr and why in run.stderr, run.stderr
    assert not out.exists()  # refused before drawing anything
  assert "edge_accuracy.csv, training_time.csv" in run.stderr  # what works


def test_accuracy_table_mean_and_std_over_seeds(results_dir):
  table = figures.accuracy_table(results_dir, "mnist")
  # EdgeCNN1-3 at N=120: 0.712 and 0.722 -> 71.70 +- 0.71, 2 seeds
  assert "71.70±0.71 (n=2) [83.12]" in table


def test_paper_values_inside_project():
  paper = figures.paper_values()
  row = paper[(paper.dataset == "fashion_mnist") & (paper.model == "EdgeCNN1-3")
              & (paper.num_images == 120)]
  assert float(row.value.iloc[0]) == pytest.approx(0.7577)


def test_load_keeps_text_columns_text(tmp_path):
  # A short commit of digits only ("0123456") is text: guessing its type
  # made it the integer 123456. N, seed and value still come back numbers.
  log = results.ResultLog(tmp_path / "edge_accuracy.csv",
                          {"experiment": "edge_accuracy", "device": "CPU",
                           "threads": 2, "commit": "0123456"})
  log.append({**FASHION_EDGECNN1_3, "labels": "true", "num_images": 120,
              "seed": 1}, [("test_accuracy_10crop", 0.75, "fraction")])
  frame = figures.load(tmp_path, "edge_accuracy")
  assert frame.commit.tolist() == ["0123456"]
  assert frame.condition.tolist() == [""]
  assert frame.num_images.tolist() == [120] and frame.seed.tolist() == [1]
  assert frame.value.tolist() == [pytest.approx(0.75)]


def test_accuracy_summary_leaves_out_ablation_rows(tmp_path):
  log = edge_log(tmp_path)
  key = {**FASHION_EDGECNN1_3, "labels": "true", "num_images": 120, "seed": 0}
  log.append(key, [("test_accuracy_10crop", 0.70, "fraction")])
  log.append({**key, "condition": "head_pool=paper"},
             [("test_accuracy_10crop", 0.90, "fraction")])
  log.append({**key, "preset": "paper"},
             [("test_accuracy_10crop", 0.80, "fraction")])
  summary = figures.accuracy_summary(
      figures.load(tmp_path, "edge_accuracy"), "fashion_mnist")
  assert summary["mean"].tolist() == [pytest.approx(0.70)]
  assert summary["n"].tolist() == [1]
  # Each preset's rows stand alone, in the summary and in the tables.
  paper = figures.accuracy_summary(
      figures.load(tmp_path, "edge_accuracy"), "fashion_mnist", preset="paper")
  assert paper["mean"].tolist() == [pytest.approx(0.80)]
  assert "80.00 (n=1) [75.77]" in figures.accuracy_table(
      tmp_path, "fashion_mnist", preset="paper")
  assert "70.00 (n=1) [75.77]" in figures.accuracy_table(tmp_path,
                                                         "fashion_mnist")
  tables = (figures.render_all(tmp_path, tmp_path / "fig")[-1]).read_text()
  assert "## Fashion-MNIST: top-1 test accuracy (%), 10-crop, paper preset" \
      in tables and "MNIST: top-1 test accuracy (%), 10-crop, paper" not in \
      tables.replace("Fashion-MNIST", "")
  # At N=1,200 an update-phase run (cloud labels for the uploads) and a run
  # of a sweep that started at 1,200 (true labels only): only the first is a
  # Table 2 cell; alone, the second stands.
  log.append({**key, "num_images": 1200, "labels": "cloud"},
             [("test_accuracy_10crop", 0.85, "fraction")])
  log.append({**key, "num_images": 1200},
             [("test_accuracy_10crop", 0.95, "fraction")])
  log.append({**key, "num_images": 240},
             [("test_accuracy_10crop", 0.75, "fraction")])
  summary = figures.accuracy_summary(
      figures.load(tmp_path, "edge_accuracy"), "fashion_mnist")
  assert summary["mean"].tolist() == [pytest.approx(v)
                                      for v in (0.70, 0.75, 0.85)]
  assert summary["n"].tolist() == [1, 1, 1]


def test_headline_table_computes_each_claim_from_the_csvs(results_dir):
  table = figures.headline_table(results_dir)
  lines = {line.split(" | ")[0].lstrip("| "): line for line in
           table.splitlines() if line.startswith("| ")}
  # Gaps paired per seed: +10 points in both fixture seeds.
  assert ("| +8.76 points | +10.00 ± 0.00 points (n=2) |"
          in lines["MNIST, EdgeCNN1-3 - EdgeCNN0-3, N=120"])
  assert ("| +17.16 points | +10.00 ± 0.00 points (n=2) |"
          in lines["Fashion-MNIST, EdgeCNN1-3 - EdgeCNN0-3, N=120"])
  assert "+1.26 points | not yet run" in lines[
      "MNIST, EdgeCNN1-3 - EdgeCNN0-3, N=60,000"]
  assert "| not yet run |" in lines[
      "CIFAR-10, EdgeCNN1-3 gain from N=100 to 5,000"]
  # 5 s against 10 s; only the MNIST pair was timed.
  assert "| -45.15% | -50.00% (median of n=1) |" in lines[
      "training time, MNIST, EdgeCNN1-10 vs EdgeCNN0-10, N=100"]
  assert "| not yet run |" in lines[
      "training time, CIFAR-10, EdgeCNN1-10 vs EdgeCNN0-10, N=120"]
  assert "| -51.87% | -50.00% (CIFAR-10) |" in lines[
      "inference time, EdgeCNN1-3 vs EdgeCNN1-10, 2,000 CIFAR-10 test images"]
  assert "| not yet run |" in lines[
      "inference time, EdgeCNN1-3 vs EdgeCNN1-5, 2,000 CIFAR-10 test images"]
  for claim in ("response time, LTE, 60 KB", "upload time, LTE, 512 KB",
                "inference time, 60 KB", "response time, WiFi (ours at 60 KB)"):
    assert "| -50.00% (proxy) |" in lines[
        f"{claim}, EdgeCNN1-3 on the edge vs CloudCNN"], claim
  assert ("| 93.15 / 93.30 / 93.09 / 93.50 | not yet run / not yet run / "
          "not yet run / not yet run |") in lines[
              "Fashion-MNIST, N=60,000: EdgeCNN1-3 / EdgeCNN1-5 / EdgeCNN1-10 "
              "/ CloudCNN"]
  assert len(lines) == 17  # header + 16 claims


def test_headline_table_reads_fashion_mnist_60000_against_the_teacher(tmp_path):
  log = edge_log(tmp_path)
  base = {"dataset": "fashion_mnist", "preset": "compact", "labels": "cloud",
          "num_images": 60000, "pretrained": True}
  for seed, value in ((0, 0.91), (1, 0.92)):
    log.append({**base, "model": "EdgeCNN1-5", "num_shared": 5, "seed": seed},
               [("test_accuracy_10crop", value, "fraction")])
  log.append({**base, "model": "EdgeCNN1-10", "num_shared": 10, "seed": 0,
              "condition": "head_pool=paper"},
             [("test_accuracy_10crop", 0.5, "fraction")])
  cloud = results.ResultLog(tmp_path / "train_cloud.csv",
                            {"experiment": "train_cloud", "device": "CPU",
                             "threads": 2, "commit": "abc"})
  key = {"dataset": "fashion_mnist", "model": "CloudCNN", "num_shared": "",
         "pretrained": "", "labels": "true", "num_images": 60000, "seed": 0}
  cloud.append({**key, "preset": "compact"},
               [("test_accuracy_10crop", 0.9174, "fraction")])
  cloud.append({**key, "preset": "paper"},
               [("test_accuracy_10crop", 0.8922, "fraction")])
  table = figures.headline_table(tmp_path)
  # Seeds averaged; the ablation and the other preset's CloudCNN left out.
  assert ("| 93.15 / 93.30 / 93.09 / 93.50 | not yet run / 91.50 ± 0.71 (n=2) "
          "/ not yet run / 91.74 (n=1) | edge_accuracy.csv, train_cloud.csv |"
          ) in table


def test_headline_table_pairs_seeds_and_skips_ablations(tmp_path):
  log = edge_log(tmp_path)
  base = {"dataset": "fashion_mnist", "preset": "compact", "num_shared": 3,
          "labels": "true", "num_images": 120}
  for seed, one, zero in ((0, 0.80, 0.60), (1, 0.70, 0.60), (2, 0.99, None)):
    log.append({**base, "model": "EdgeCNN1-3", "pretrained": True,
                "seed": seed}, [("test_accuracy_10crop", one, "fraction")])
    if zero is not None:
      log.append({**base, "model": "EdgeCNN0-3", "pretrained": False,
                  "seed": seed}, [("test_accuracy_10crop", zero, "fraction")])
  log.append({**base, "model": "EdgeCNN0-3", "pretrained": False, "seed": 2,
              "condition": "head_pool=paper"},
             [("test_accuracy_10crop", 0.10, "fraction")])
  table = figures.headline_table(tmp_path)
  # Seed 2 has no plain EdgeCNN0-3 row: left out, not paired with the ablation.
  assert "| +15.00 ± 7.07 points (n=2) |" in table


def test_weights_table_pairs_best_and_last_per_run(tmp_path):
  log = edge_log(tmp_path)
  key = {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 360}
  for seed, best, last in ((0, 0.70, 0.75), (1, 0.80, 0.79)):
    log.append({**key, "seed": seed},
               [("best_epoch_test_accuracy_10crop", best, "fraction"),
                ("last_epoch_test_accuracy_10crop", last, "fraction")])
  # Seed 2 tested one weights only; an ablation's row is left out.
  log.append({**key, "seed": 2}, [("test_accuracy_10crop", 0.9, "fraction")])
  log.append({**key, "seed": 0, "condition": "labels=oracle"},
             [("best_epoch_test_accuracy_10crop", 0.1, "fraction"),
              ("last_epoch_test_accuracy_10crop", 0.9, "fraction")])
  table = figures.weights_table(tmp_path, "fashion_mnist")
  # last - best: +5 and -1 points -> +2.00 +- 4.24; paper 82.04.
  assert ("| EdgeCNN1-3 | 360 | 75.00±7.07 | 77.00±2.83 | +2.00±4.24 (n=2) "
          "| 1 of 2 | 82.04 |") in table
  assert "Over all 2 runs: the last epoch's weights tested higher in 1, " \
         "lower in 1" in table
  assert figures.weights_table(tmp_path, "fashion_mnist", summary=True) == (
      "Over all 2 runs: the last epoch's weights tested higher in 1, lower "
      "in 1; median difference +2.00 points.\n")
  assert figures.weights_table(tmp_path, "mnist") == \
      "No runs tested both weights yet.\n"
  with pytest.raises(ValueError, match="Received: 'centre'"):
    figures.weights_table(tmp_path, "fashion_mnist", crop="centre")
  tables = figures.render_all(tmp_path, tmp_path / "fig")[-1].read_text()
  assert "## Fashion-MNIST: the best validation epoch's weights" in tables
  assert "+2.00±4.24 (n=2)" in tables


def test_ablation_table_pairs_runs_across_two_csvs(tmp_path):
  base = edge_log(tmp_path)
  ablation = edge_log(tmp_path, "ablation_oracle")
  key = {**FASHION_EDGECNN1_3, "num_images": 360}
  for seed, cloud, oracle in ((0, 0.80, 0.82), (1, 0.70, 0.69), (2, 0.5, None)):
    base.append({**key, "labels": "cloud", "seed": seed},
                [("test_accuracy_10crop", cloud, "fraction")])
    if oracle is not None:  # seed 2 has no pair: left out
      ablation.append({**key, "labels": "oracle", "seed": seed},
                      [("test_accuracy_10crop", oracle, "fraction")])
  # The base's ablation rows never stand in for its plain ones.
  base.append({**key, "labels": "cloud", "seed": 1, "condition": "x=1"},
              [("test_accuracy_10crop", 0.1, "fraction")])
  table = figures.ablation_table(tmp_path, "ablation_oracle", "fashion_mnist")
  assert ("| EdgeCNN1-3 | 360 | 75.00±7.07 | 75.50±9.19 | +0.50±2.12 "
          "(n=2; +2.00, -1.00) | 82.04 |") in table
  assert figures.ablation_table(tmp_path, "ablation_oracle", "mnist") == \
      "No run of ablation_oracle.csv is in edge_accuracy.csv.\n"
  # Another metric of the ablation against the base's test accuracy.
  ablation.append({**key, "labels": "oracle", "seed": 3},
                  [("best_epoch_test_accuracy_10crop", 0.6, "fraction")])
  base.append({**key, "labels": "cloud", "seed": 3},
              [("test_accuracy_10crop", 0.6, "fraction")])
  rerun = figures.ablation_table(
      tmp_path, "ablation_oracle", "fashion_mnist",
      metric="best_epoch_test_accuracy_10crop",
      base_metric="test_accuracy_10crop")
  assert "| 60.00 | 60.00 | +0.00 (n=1; +0.00) |" in rerun
  assert "ablation_oracle's best_epoch_test_accuracy_10crop against " \
         "edge_accuracy's test_accuracy_10crop" in rerun
  with pytest.raises(FileNotFoundError, match="No ablation_head.csv in"):
    figures.ablation_table(tmp_path, "ablation_head", "fashion_mnist")
  with pytest.raises(FileNotFoundError,
                     match="No edge_accuracy_x.csv or ablation_head.csv in"):
    figures.ablation_table(tmp_path, "ablation_head", "fashion_mnist",
                           base="edge_accuracy_x")


def test_ablation_table_never_pairs_or_averages_runs_of_other_labels(tmp_path):
  # At N=5,000 a sweep that starts at 100 trains on 100 true labels and 4,900
  # of CloudCNN's; one that starts at 5,000 on 5,000 true labels: two runs.
  base = edge_log(tmp_path)
  ablation = edge_log(tmp_path, "ablation_long")
  key = {**FASHION_EDGECNN1_3, "dataset": "cifar10", "num_images": 5000}
  acc = "last_epoch_test_accuracy_10crop"
  for seed in (0, 1):
    base.append({**key, "labels": "cloud", "seed": seed},
                [(acc, 0.70, "fraction")])
    ablation.append({**key, "labels": "true", "seed": seed},
                    [(acc, 0.20, "fraction")])
  ablation.append({**key, "labels": "cloud", "seed": 0},
                  [(acc, 0.72, "fraction")])
  base.append({**key, "num_images": 100, "labels": "true", "seed": 0},
              [(acc, 0.40, "fraction")])
  ablation.append({**key, "num_images": 100, "labels": "true", "seed": 0},
                  [(acc, 0.41, "fraction")])
  table = figures.ablation_table(tmp_path, "ablation_long", "cifar10",
                                 metric=acc)
  assert "| EdgeCNN1-3 | 100 | 40.00 | 41.00 | +1.00 (n=1; +1.00) |" in table
  assert "| EdgeCNN1-3 | 5000 | 70.00 | 72.00 | +2.00 (n=1; +2.00) |" in table
  assert "20.00" not in table and "(true labels only)" not in table
  assert ("Not paired, their labels differ" in table and
          "EdgeCNN1-3 N=5000 seeds 0, 1 (true in ablation_long, cloud in "
          "edge_accuracy)." in table)
  summary = figures.ablation_summary(tmp_path, weights="last")
  assert ("| ablation_long | cifar10 | – | unrecorded | unrecorded | 2 | "
          "EdgeCNN1-3 | 100-5,000 (2) | +1.50±0.71 | 2 / 0 / 0 |") in summary
  assert ("Runs left unpaired because their labels differ from the same "
          "model, N and seed in edge_accuracy.csv (ablation_table lists "
          "them): ablation_long.csv, cifar10 (2).") in summary
  # Within one pair of sweeps that both hold both kinds: separate rows.
  base.append({**key, "labels": "true", "seed": 0}, [(acc, 0.25, "fraction")])
  table = figures.ablation_table(tmp_path, "ablation_long", "cifar10",
                                 metric=acc)
  assert ("| EdgeCNN1-3 | 5000 (true labels only) | 25.00 | 20.00 | -5.00 "
          "(n=1; -5.00) |") in table
  assert "| EdgeCNN1-3 | 5000 | 70.00 | 72.00 |" in table
  assert "EdgeCNN1-3 N=5000 seed 1 (true in ablation_long, cloud in" in table
  assert "N=5000 seeds" not in table


def test_ablation_summary_pairs_every_csv_on_the_same_weights(tmp_path):
  base = edge_log(tmp_path)
  ablation = edge_log(tmp_path, "ablation_head")
  older = edge_log(tmp_path, "ablation_robust")
  key = {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 120}
  last = "last_epoch_test_accuracy_10crop"
  for seed, plain, head in ((0, 0.70, 0.71), (1, 0.72, 0.715), (2, None, 0.9)):
    if plain is not None:  # seed 2 has no run in the base: left out
      base.append({**key, "seed": seed},
                  [(last, plain, "fraction"),
                   ("test_accuracy_10crop", plain, "fraction")])
    ablation.append({**key, "seed": seed, "condition": "head_pool=paper"},
                    [(last, head, "fraction"),
                     ("test_accuracy_10crop", head, "fraction")])
  # The base's own ablation rows never stand in for its plain runs.
  base.append({**key, "seed": 0, "condition": "x=1"},
              [(last, 0.1, "fraction")])
  # A run from before the last and best weights were both reported: which
  # weights its test_accuracy measured is not in the CSV, so it is not paired.
  older.append({**key, "seed": 0}, [("test_accuracy_10crop", 0.5, "fraction")])
  pd.DataFrame({"edge_id": ["e"], "version": [1]}).to_csv(
      tmp_path / "main_job.csv", index=False)
  (tmp_path / "response_time.csv").write_text("")

  summary = figures.ablation_summary(tmp_path)
  assert ("| ablation_head | fashion_mnist | head_pool=paper | unrecorded | "
          "unrecorded | 2 | EdgeCNN1-3 | 120 | +0.25±1.06 | 1 / 1 / 0 |"
          ) in summary
  assert "ablation_robust |" not in summary
  assert ("do not record which weights they tested (no "
          "last_epoch_test_accuracy_10crop): ablation_robust.csv (1).") in summary
  assert "No run in edge_accuracy.csv: main_job.csv." in summary
  assert ("Not readable as a CSV: response_time.csv (EmptyDataError: "
          in summary)
  # The same through a document's table marker.
  doc = "<!-- table: ablation_summary() -->\nold\n<!-- end table -->\n"
  assert "| ablation_head |" in figures.refresh_tables(doc, tmp_path)
  with pytest.raises(ValueError, match="`weights` must be one of"):
    figures.ablation_summary(tmp_path, weights="final")
  assert figures.ablation_summary(tmp_path, base="absent").startswith(
      "No absent.csv in")


def test_ablation_summary_names_a_teacher_other_than_the_bases(tmp_path):
  key = {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 120, "seed": 0}
  last = "last_epoch_test_accuracy_10crop"
  for stem, value in (("edge_accuracy", 0.70), ("ablation_same", 0.71),
                      ("ablation_long", 0.75)):
    edge_log(tmp_path, stem).append(key, [(last, value, "fraction")])
  name = "fashion_mnist-compact"
  # The base's teacher from its history, the others' from either source.
  for stem, cloud_dir in (
      ("edge_accuracy", "results/models/fashion_mnist-compact-seed0"),
      ("ablation_long", "results/models/fashion_mnist-compact-seed0-long"),
      ("ablation_long", "results/models/fashion_mnist-compact-seed0-long"),
      ("ablation_same", None)):
    results.append_invocation(tmp_path / f"{stem}.invocations.jsonl",
                              {"name": name, "flags": {"cloud_dir": cloud_dir}})
  # Another dataset's command in the same history is not this one's teacher.
  results.append_invocation(tmp_path / "ablation_same.invocations.jsonl",
                            {"name": "mnist-compact",
                             "flags": {"cloud_dir": "elsewhere"}})
  results.write_metadata(tmp_path / f"ablation_same.{name}.flags.json",
                         {"cloud_dir": "results/models/fashion_mnist-compact-seed0"})
  summary = figures.ablation_summary(tmp_path)
  assert ("| ablation_same | fashion_mnist | – | – | base's | 1 | EdgeCNN1-3 "
          "| 120 | +1.00") in summary
  assert ("| ablation_long | fashion_mnist | – | – | "
          "fashion_mnist-compact-seed0-long | 1 | EdgeCNN1-3 | 120 | +5.00"
          ) in summary
  assert "the difference is the teacher's and the condition's" in summary
  table = figures.ablation_table(tmp_path, "ablation_long", "fashion_mnist",
                                 metric=last)
  assert ("The CloudCNNs differ (--cloud_dir): fashion_mnist-compact-seed0-long "
          "in ablation_long; fashion_mnist-compact-seed0 in edge_accuracy, so "
          "the difference is the teachers' as well.") in table
  assert "CloudCNNs differ" not in figures.ablation_table(
      tmp_path, "ablation_same", "fashion_mnist", metric=last)
  # A flags file that is not JSON leaves the teacher to the history.
  (tmp_path / f"ablation_long.{name}.flags.json").write_text("{cut")
  assert "fashion_mnist-compact-seed0-long | 1 |" in figures.ablation_summary(
      tmp_path)


def test_ablation_summary_gives_the_training_flags_its_commands_set(tmp_path):
  # Most ablations' rows carry no condition; the flags their commands set
  # away from the defaults say how they were trained.
  key = {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 120, "seed": 0}
  last = "last_epoch_test_accuracy_10crop"
  for stem in ("edge_accuracy", "ablation_mirrors", "ablation_mixed"):
    edge_log(tmp_path, stem).append(key, [(last, 0.7, "fraction")])
  name = "fashion_mnist-compact"
  for stem, flags in (
      # The base set one flag to a non-default value: the caption says so.
      ("edge_accuracy", {"cloud_label_mode": "center", "flip": None}),
      ("ablation_mirrors", {"flip": False, "augment": None,
                            "train_shared": False, "labels": "cloud"}),
      # An older record without a flag ran under its default; values that
      # differ between commands are all given, in the order first seen.
      ("ablation_mixed", {"train_config": "robust", "lr_patience": 30}),
      ("ablation_mixed", {"train_config": "robust", "lr_patience": 20,
                          "train_shared": True})):
    results.append_invocation(tmp_path / f"{stem}.invocations.jsonl",
                              {"name": name, "flags": flags})
  summary = figures.ablation_summary(tmp_path)
  assert ("| ablation_mirrors | fashion_mnist | – | --noflip | unrecorded |"
          in summary)
  assert ("| ablation_mixed | fashion_mnist | – | --train_config=robust "
          "--lr_patience=30|20 --train_shared | unrecorded |") in summary
  assert "left out" not in summary  # every run reports the last weights
  assert ("set away from their defaults (\"unrecorded\" for a CSV older "
          "than its history); edge_accuracy.csv's, for fashion_mnist: "
          "--cloud_label_mode=center.") in summary
  # One ablation's table says how its commands and the base's differ.
  table = figures.ablation_table(tmp_path, "ablation_mirrors", "fashion_mnist",
                                 metric=last)
  assert ("The training flags differ (those the commands set away from their "
          "defaults): --noflip in ablation_mirrors; --cloud_label_mode=center "
          "in edge_accuracy.") in table


def test_training_flag_defaults_are_the_binaries_own():
  # figures reads saved flag records against these defaults; a binary whose
  # default changed would make them lie.
  script = ("import json, sys; import experiments.edge_accuracy; "
            "from absl import flags; json.dump({n: flags.FLAGS[n].default "
            "for n in json.loads(sys.argv[1])}, sys.stdout)")
  out = subprocess.run(
      [sys.executable, "-c", script,
       json.dumps(sorted(figures.TRAINING_FLAG_DEFAULTS))],
      capture_output=True, text=True, check=True,
      cwd=pathlib.Path(__file__).resolve().parents[1],
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert json.loads(out.stdout) == figures.TRAINING_FLAG_DEFAULTS


def test_preset_table_compares_presets_on_the_seeds_both_have(tmp_path):
  log = edge_log(tmp_path)
  key = {**FASHION_EDGECNN1_3, "labels": "cloud", "num_images": 120}
  for seed, paper, compact in ((0, 0.70, 0.78), (1, 0.72, 0.74),
                               (2, None, 0.10)):
    if paper is not None:
      log.append({**key, "preset": "paper", "seed": seed},
                 [("test_accuracy_10crop", paper, "fraction")])
    # Seed 2 has no paper-preset run: its compact 10% is left out.
    log.append({**key, "seed": seed},
               [("test_accuracy_10crop", compact, "fraction")])
  log.append({**key, "num_images": 1200, "preset": "paper", "seed": 0},
             [("test_accuracy_10crop", 0.8, "fraction")])
  # An ablation's row never stands in for the plain recipe.
  log.append({**key, "num_images": 1200, "seed": 0, "condition": "x=1"},
             [("test_accuracy_10crop", 0.9, "fraction")])
  table = figures.preset_table(tmp_path, "fashion_mnist")
  assert ("| EdgeCNN1-3 | 120 | 71.00±1.41 | 76.00±2.83 | 0, 1 | 75.77 |"
          in table)
  assert "| EdgeCNN1-3 | 1200 | not yet run | not yet run | – | 86.00 |" in table
  assert figures.preset_table(tmp_path, "mnist") == \
      "No paper-preset run of mnist in edge_accuracy.csv yet.\n"
  with pytest.raises(ValueError, match=r"Received: \('paper',\)"):
    figures.preset_table(tmp_path, "fashion_mnist", presets=("paper",))
  tables = figures.render_all(tmp_path, tmp_path / "fig")[-1].read_text()
  assert "## Fashion-MNIST: the paper preset beside the compact preset" in tables
  assert "71.00±1.41 | 76.00±2.83" in tables


def test_training_time_table_pairs_reductions_per_seed(tmp_path):
  log = results.ResultLog(tmp_path / "training_time.csv",
                          {"experiment": "training_time", "device": "CPU",
                           "threads": 2, "commit": "abc"})
  base = {"dataset": "fashion_mnist", "preset": "compact", "num_shared": 3,
          "labels": "true", "num_images": 120}
  # Seed 0: 10 s vs 20 s (-50%), seed 1: 30 s vs 40 s (-25%), seed 2
  # EdgeCNN1 only (no pair).
  for seed, one, zero in ((0, 10.0, 20.0), (1, 30.0, 40.0), (2, 1.0, None)):
    for model, pretrained, wall in (("EdgeCNN1-3", True, one),
                                    ("EdgeCNN0-3", False, zero)):
      if wall is not None:
        log.append({**base, "model": model, "pretrained": pretrained,
                    "seed": seed},
                   [("wall_time", wall, "s"), ("epochs", 10, "epochs"),
                    ("time_per_epoch", wall / 10, "s")])
  table = figures.training_time_table(tmp_path)
  # Medians: EdgeCNN1 over seeds 0-2 (10, 30, 1) -> 10; reductions paired on
  # seeds 0 and 1, median of -50% and -25%.
  assert ("| Fashion-MNIST | 120 | 3 | 10.0 (10; 1.00) | 30.0 (10; 3.00) | "
          "-37.5% | -37.5% | 2 | -45.47% |") in table
  assert figures.training_time_table(tmp_path, preset="paper") == \
      "No paper-preset pair of EdgeCNN1-m and EdgeCNN0-m in training_time.csv yet.\n"
  assert figures.training_time_table(tmp_path / "none") == \
      "No training_time.csv yet.\n"
  assert "## Training time to the stopping rule (Fig. 10)" in \
      figures.render_all(tmp_path, tmp_path / "fig")[-1].read_text()


def test_refresh_tables_recomputes_marked_tables_and_keeps_prose(
    results_dir, tmp_path):
  doc = tmp_path / "REPORT.md"
  text = ("# Report\n\nProse before, quoting `<!-- table: CALL -->` and "
          "`<!-- end table -->`.\n\n"
          "<!-- table: accuracy_table('mnist') -->\nstale numbers\n"
          "<!-- end table -->\n\nProse between.\n\n"
          "<!-- table: training_time_table(preset='compact') -->\n"
          "<!-- end table -->\nProse after.\n")
  doc.write_text(text)
  env = {**os.environ, "MPLBACKEND": "Agg"}
  run = subprocess.run(
      [sys.executable, "-m", "experiments.plot_figures",
       f"--results_dir={results_dir}", f"--out_dir={tmp_path / 'fig'}",
       f"--refresh_docs={doc}"], env=env, capture_output=True, text=True,
      timeout=300)
  assert run.returncode == 0, run.stderr
  assert f"{doc}: tables refreshed" in run.stdout
  new = doc.read_text()
  assert "stale numbers" not in new
  assert figures.accuracy_table(results_dir, "mnist").rstrip() in new
  assert figures.training_time_table(results_dir).rstrip() in new
  for prose in ("Prose before, quoting `<!-- table: CALL -->` and "
                "`<!-- end table -->`.", "Prose between.", "Prose after."):
    assert prose in new
  # Refreshing again changes nothing: the markers survive.
  assert figures.refresh_tables(new, results_dir) == new

  for bad, error in (
      ("<!-- table: os.system('ls') -->\n<!-- end table -->",
       "not a call of a function by its bare name"),
      ("<!-- table: plot_accuracy('mnist') -->\n<!-- end table -->",
       "Unknown table 'plot_accuracy'"),
      ("<!-- table: accuracy_table(dataset) -->\n<!-- end table -->",
       "literal arguments"),
      ("ok\n<!-- table: accuracy_table('mnist') -->\n",
       "1 table markers and 0 end markers.*on line 2"),
      ("<!-- table: accuracy_table('mnist', crop='x') -->\n<!-- end table -->",
       "Table marker \"accuracy_table\\('mnist', crop='x'\\)\": .*crop")):
    with pytest.raises(ValueError, match=error):
      figures.refresh_tables(bad, results_dir)
  # A bad marker leaves the document as it was.
  doc.write_text(text + "<!-- table: nope() -->\n<!-- end table -->\n")
  run = subprocess.run(
      [sys.executable, "-m", "experiments.plot_figures",
       f"--results_dir={results_dir}", f"--out_dir={tmp_path / 'fig'}",
       f"--refresh_docs={doc}"], env=env, capture_output=True, text=True,
      timeout=300)
  assert run.returncode != 0 and "Unknown table 'nope'" in run.stderr
  assert doc.read_text() == text + "<!-- table: nope() -->\n<!-- end table -->\n"


def test_reproduction_report_markers_name_known_tables():
  # Every table marker in the committed report can be refreshed; a typo in a
  # marker would otherwise surface only at the end of a session.
  calls = figures.table_markers(
      (ROOT / "results" / "REPRODUCTION.md").read_text())
  assert any(c.startswith("accuracy_table('fashion_mnist'") for c in calls)
  assert "headline_table()" in calls


def test_bar_table_is_ours_minus_the_paper_per_cell(results_dir):
  table = figures.bar_table(results_dir, "mnist")
  paper = figures.paper_values()

  def theirs(model, n):
    return figures.paper_value(paper, "test_accuracy_10crop", "mnist", model,
                               n)

  def ours(n):  # the fixture's EdgeCNN1-m: 0.7 + N/10000 + seed/100, seeds 0-1
    return 0.7 + n / 10000 + 0.005

  header, _, *rows = table.splitlines()[:5]
  assert header == "| model | 120 | 1,200 |"
  for m, row in zip((3, 5, 10), rows):
    cells = [f"{100 * (ours(n) - theirs(f'EdgeCNN1-{m}', n)):+.2f} (n=2)"
             for n in (120, 1200)]
    assert row == f"| EdgeCNN1-{m} | " + " | ".join(cells) + " |"
  below = [(m, n) for m in (3, 5, 10) for n in (120, 1200)
           if ours(n) < theirs(f"EdgeCNN1-{m}", n)]
  assert below  # the fixture's cells are under the paper's
  assert (f"At or above the paper: {6 - len(below)} of 6 cells; below: "
          f"EdgeCNN1-{below[0][0]} at N={below[0][1]:,} (") in table
  gap = 100 * (theirs("EdgeCNN1-3", 120) - theirs("EdgeCNN0-3", 120))
  assert f"m=3 +10.00 ± 0.00 points (n=2) (paper {gap:+.2f})" in table
  assert "No compact-preset EdgeCNN1 row of cifar10" in figures.bar_table(
      results_dir, "cifar10")
  assert "No nothing.csv yet" in figures.bar_table(results_dir, "mnist",
                                                   name="nothing")


def test_bar_table_takes_the_gaps_edgecnn0_from_another_csv(tmp_path):
  # An ablation of the CloudCNN trains EdgeCNN1 only; its gap at the smallest
  # N pairs with the main grid's EdgeCNN0 of the same seeds.
  main, ablation = edge_log(tmp_path), edge_log(tmp_path, "ablation_teacher")
  for seed in (0, 1, 2):
    for n in (120, 240):
      for m in (3, 5, 10):
        key = {"dataset": "fashion_mnist", "preset": "compact",
               "num_shared": m, "labels": "cloud", "num_images": n,
               "seed": seed}
        main.append({**key, "model": f"EdgeCNN0-{m}", "pretrained": False},
                    [("test_accuracy_10crop", 0.5 + seed / 100, "fraction")])
        main.append({**key, "model": f"EdgeCNN1-{m}", "pretrained": True},
                    [("test_accuracy_10crop", 0.6, "fraction")])
        if seed < 2:  # seed 2's EdgeCNN0 has no EdgeCNN1 to pair with
          ablation.append({**key, "model": f"EdgeCNN1-{m}", "pretrained": True},
                          [("test_accuracy_10crop", 0.8, "fraction")])
  alone = figures.bar_table(tmp_path, "fashion_mnist", name="ablation_teacher")
  assert "Gap" not in alone  # no EdgeCNN0 row of its own: no gap to show
  # A CSV of one m gets one row, not rows of dashes for the others.
  one_m = edge_log(tmp_path, "ablation_one_m")
  one_m.append({"dataset": "fashion_mnist", "preset": "compact",
                "num_shared": 5, "labels": "cloud", "num_images": 120,
                "seed": 0, "model": "EdgeCNN1-5", "pretrained": True},
               [("test_accuracy_10crop", 0.8, "fraction")])
  rows = figures.bar_table(tmp_path, "fashion_mnist",
                           name="ablation_one_m").splitlines()
  assert rows[:3] == ["| model | 120 |", "|---|---|",
                      f"| EdgeCNN1-5 | {80 - 78.21:+.2f} (n=1) |"]
  assert rows[3] == ""
  table = figures.bar_table(tmp_path, "fashion_mnist", name="ablation_teacher",
                            zeros="edge_accuracy")
  assert table.splitlines()[:5] == alone.splitlines()[:5]
  # 0.8 - (0.5 + seed/100) over seeds 0 and 1: 30 and 29 points.
  assert ("Gap EdgeCNN1-m - EdgeCNN0-m at N=120 (EdgeCNN0-m from "
          "edge_accuracy.csv), paired per seed: m=3 +29.50 ± 0.71 points (n=2)"
          in table)
  # The main grid has EdgeCNN0 of its own: its line names no other CSV.
  own = figures.bar_table(tmp_path, "fashion_mnist", zeros="edge_accuracy")
  assert "paired per seed: m=3 +9.00 ± 1.00 points (n=3)" in own
  assert "from edge_accuracy.csv" not in own
  assert "No missing.csv yet (the EdgeCNN0 rows of the gap)" in (
      figures.bar_table(tmp_path, "fashion_mnist", name="ablation_teacher",
                        zeros="missing"))


def test_bar_table_gap_at_another_n(tmp_path):
  # The paper states the MNIST gap at N=60,000 too (Fig. 8a, +1.26, as a
  # gain only); gap_n moves the gap line there, and says so when no seed
  # has both models at that N.
  log = edge_log(tmp_path)
  for seed in (0, 1):
    for n in (120, 60000):
      for m, zero, one in ((3, 0.9, 0.95), (5, 0.9, 0.9)):
        key = {"dataset": "mnist", "preset": "compact", "num_shared": m,
               "labels": "cloud", "num_images": n, "seed": seed}
        log.append({**key, "model": f"EdgeCNN0-{m}", "pretrained": False},
                   [("test_accuracy_10crop", zero + seed / 1000, "fraction")])
        log.append({**key, "model": f"EdgeCNN1-{m}", "pretrained": True},
                   [("test_accuracy_10crop", one + n / 1e7, "fraction")])
  small = figures.bar_table(tmp_path, "mnist")
  assert "Gap EdgeCNN1-m - EdgeCNN0-m at N=120, paired per seed: m=3" in small
  large = figures.bar_table(tmp_path, "mnist", gap_n=60000)
  assert large.splitlines()[:5] == small.splitlines()[:5]  # same cells
  # m=3: 0.95 + 0.006 - (0.9 + seed/1000) = 5.60 and 5.50 points.
  assert ("Gap EdgeCNN1-m - EdgeCNN0-m at N=60,000, paired per seed: "
          "m=3 +5.55 ± 0.07 points (n=2) (paper +1.26); "
          "m=5 +0.55 ± 0.07 points (n=2).") in large
  assert ("Gap EdgeCNN1-m - EdgeCNN0-m at N=1,000: no seed has both models "
          "there (in edge_accuracy.csv).") in figures.bar_table(
              tmp_path, "mnist", gap_n=1000)


def test_gap_table_pairs_both_models_per_n_beside_the_paper(tmp_path):
  # Both models at N=120 and 240 (seeds 0-1), EdgeCNN1 alone at 360 (no
  # row), both at 60,000 (the paper gives only Fig. 8a's gain there).
  log = edge_log(tmp_path)
  accuracy = {120: (0.85, 0.75), 240: (0.90, 0.85), 60000: (0.98, 0.975)}
  for seed in (0, 1):
    for n, (one, zero) in accuracy.items():
      key = {"dataset": "mnist", "preset": "compact", "num_shared": 3,
             "labels": "cloud", "num_images": n, "seed": seed}
      log.append({**key, "model": "EdgeCNN1-3", "pretrained": True},
                 [("test_accuracy_10crop", one + seed / 100, "fraction")])
      log.append({**key, "model": "EdgeCNN0-3", "pretrained": False},
                 [("test_accuracy_10crop", zero, "fraction")])
    log.append({"dataset": "mnist", "preset": "compact", "num_shared": 3,
                "labels": "cloud", "num_images": 360, "seed": seed,
                "model": "EdgeCNN1-3", "pretrained": True},
               [("test_accuracy_10crop", 0.9, "fraction")])
  paper = figures.paper_values()
  theirs = {(model, n): figures.paper_value(
      paper, "test_accuracy_10crop", "mnist", model, n)
            for model in ("EdgeCNN1-3", "EdgeCNN0-3") for n in (120, 240)}
  table = figures.gap_table(tmp_path, "mnist")
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert [row.split(" | ")[0] for row in rows[1:]] == [
      "| 120", "| 240", "| 60,000"]  # 360 has no EdgeCNN0-3
  # 120: EdgeCNN1-3 85.0 and 86.0 (85.50±0.71), EdgeCNN0-3 75.00; gaps 10
  # and 11 points.
  gain = 100 * (theirs["EdgeCNN1-3", 120] - theirs["EdgeCNN0-3", 120])
  assert rows[1] == (
      f"| 120 | 85.50±0.71 | {100 * theirs['EdgeCNN1-3', 120]:.2f} | "
      f"75.00±0.00 | {100 * theirs['EdgeCNN0-3', 120]:.2f} | "
      f"+10.50±0.71 (n=2) | {gain:+.2f} |")
  assert rows[3] == ("| 60,000 | 98.50±0.71 | – | 97.50±0.00 | – | "
                     "+1.00±0.71 (n=2) | +1.26 |")
  off1 = [85.5 - 100 * theirs["EdgeCNN1-3", 120],
          90.5 - 100 * theirs["EdgeCNN1-3", 240]]
  assert (f"EdgeCNN1-3 minus the paper over 2 N: mean "
          f"{sum(off1) / 2:+.2f}, mean absolute "
          f"{(abs(off1[0]) + abs(off1[1])) / 2:.2f}, largest absolute "
          f"{max(map(abs, off1)):.2f} points.") in table
  assert "No seed of mnist in edge_accuracy.csv has both EdgeCNN1-5 and " \
      "EdgeCNN0-5 at one N" in figures.gap_table(tmp_path, "mnist", m=5)
  with pytest.raises(ValueError, match="m must be 3, 5 or 10.*received 4"):
    figures.gap_table(tmp_path, "mnist", m=4)
  # A teacher ablation's EdgeCNN1-3 alone, paired with the EdgeCNN0-3 rows
  # of another CSV; once it has EdgeCNN0-3 rows of its own, those.
  other = edge_log(tmp_path, "ablation_teacher")

  def add(model, accuracy, n=120, seeds=(0, 1), log=other):
    for seed in seeds:
      log.append({"dataset": "mnist", "preset": "compact", "num_shared": 3,
                  "labels": "cloud", "num_images": n, "seed": seed,
                  "model": model, "pretrained": model.startswith("EdgeCNN1")},
                 [("test_accuracy_10crop", accuracy, "fraction")])

  add("EdgeCNN1-3", 0.80)
  table = figures.gap_table(tmp_path, "mnist", name="ablation_teacher",
                            zeros="edge_accuracy")
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert [row.split(" | ")[:4] for row in rows[1:]] == [
      ["| 120", "80.00±0.00", f"{100 * theirs['EdgeCNN1-3', 120]:.2f}",
       "75.00±0.00"]]
  assert rows[1].endswith(f"| +5.00±0.00 (n=2) | {gain:+.2f} |")
  assert ("EdgeCNN1-3 from ablation_teacher.csv, EdgeCNN0-3 from "
          "edge_accuracy.csv (its runs of the same seeds).") in table
  assert "has both EdgeCNN1-3 and EdgeCNN0-3" in figures.gap_table(
      tmp_path, "mnist", name="ablation_teacher")  # none without zeros
  assert figures.gap_table(tmp_path, "mnist", name="ablation_teacher",
                           zeros="nowhere") == (
      "No nowhere.csv yet (the EdgeCNN0-3 rows of the gap).\n")
  assert ("No seed of mnist in ablation_teacher.csv (EdgeCNN1-5) and "
          "edge_accuracy.csv (EdgeCNN0-5) has both") in figures.gap_table(
              tmp_path, "mnist", m=5, name="ablation_teacher",
              zeros="edge_accuracy")
  add("EdgeCNN0-3", 0.10)
  table = figures.gap_table(tmp_path, "mnist", name="ablation_teacher",
                            zeros="edge_accuracy")
  assert "| +70.00±0.00 (n=2) |" in table and " from " not in table
  # Borrowing is per N: at 240 the sweep has EdgeCNN1-3 alone, so its
  # EdgeCNN0-3 there (0.85) comes from the main grid, and the line says where.
  add("EdgeCNN1-3", 0.95, n=240)
  table = figures.gap_table(tmp_path, "mnist", name="ablation_teacher",
                            zeros="edge_accuracy")
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert rows[1].split(" | ")[5] == "+70.00±0.00 (n=2)"  # N=120, its own
  assert rows[2].split(" | ")[:6] == [
      "| 240", "95.00±0.00", f"{100 * theirs['EdgeCNN1-3', 240]:.2f}",
      "85.00±0.00", f"{100 * theirs['EdgeCNN0-3', 240]:.2f}",
      "+10.00±0.00 (n=2)"]
  assert ("EdgeCNN0-3 at N=240 from edge_accuracy.csv (its runs of the same "
          "seeds), where ablation_teacher.csv has none; everything else from "
          "ablation_teacher.csv.") in table
  assert "| 240 |" not in figures.gap_table(
      tmp_path, "mnist", name="ablation_teacher")  # no pair without zeros
  # Its own EdgeCNN0-3 of another seed is no pair, and is not replaced.
  lonely = edge_log(tmp_path, "ablation_lonely")
  add("EdgeCNN1-3", 0.80, seeds=(0,), log=lonely)
  add("EdgeCNN0-3", 0.70, seeds=(1,), log=lonely)
  assert figures.gap_table(tmp_path, "mnist", name="ablation_lonely",
                           zeros="edge_accuracy") == (
      "No seed of mnist in ablation_lonely.csv (or, for EdgeCNN0-3 where it "
      "has none, edge_accuracy.csv) has both EdgeCNN1-3 and EdgeCNN0-3 at one "
      "N (compact preset).\n")


def test_bar_table_of_one_ablation_condition(tmp_path):
  # An ablation of the head (EdgeCNN1 and EdgeCNN0 with condition
  # head_pool=paper) beside plain rows in one CSV: the default table is the
  # plain rows', `condition` gives the ablation's cells and its own gap.
  log = edge_log(tmp_path, "ablation_head")
  for seed in (0, 1):
    key = {"dataset": "fashion_mnist", "preset": "compact", "num_shared": 3,
           "labels": "true", "num_images": 120, "seed": seed}
    for condition, one, zero in (("", 0.70, 0.60),
                                 ("head_pool=paper", 0.80, 0.50 + seed / 10)):
      log.append({**key, "model": "EdgeCNN1-3", "pretrained": True,
                  "condition": condition},
                 [("test_accuracy_10crop", one, "fraction")])
      log.append({**key, "model": "EdgeCNN0-3", "pretrained": False,
                  "condition": condition},
                 [("test_accuracy_10crop", zero, "fraction")])
  paper = figures.paper_values()
  theirs = figures.paper_value(paper, "test_accuracy_10crop", "fashion_mnist",
                               "EdgeCNN1-3", 120)
  plain = figures.bar_table(tmp_path, "fashion_mnist", name="ablation_head")
  assert f"| EdgeCNN1-3 | {100 * (0.70 - theirs):+.2f} (n=2) |" in plain
  assert "m=3 +10.00 ± 0.00 points (n=2)" in plain
  head = figures.bar_table(tmp_path, "fashion_mnist", name="ablation_head",
                           condition="head_pool=paper")
  assert f"| EdgeCNN1-3 | {100 * (0.80 - theirs):+.2f} (n=2) |" in head
  # 0.80 - 0.50 and 0.80 - 0.60: 30 and 20 points.
  assert "m=3 +25.00 ± 7.07 points (n=2)" in head
  assert "No compact-preset EdgeCNN1 row with condition 'x=1' of " \
      "fashion_mnist in ablation_head.csv" in figures.bar_table(
          tmp_path, "fashion_mnist", name="ablation_head", condition="x=1")
