import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from edgecnn import results

KEY = {"dataset": "mnist", "preset": "compact", "model": "EdgeCNN1-3",
       "num_shared": 3, "pretrained": True, "labels": "cloud",
       "num_images": 120, "seed": 0}


def test_append_read_and_resume(tmp_path):
  path = tmp_path / "r.csv"
  log = results.ResultLog(path, {"experiment": "e", "device": "CPU",
                                 "threads": 2, "commit": "abc"})
  assert not log.done(KEY)
  log.append(KEY, [("test_accuracy_10crop", 0.9, "fraction"),
                   ("wall_time", 1.5, "s")])
  assert log.done(KEY)
  assert not log.done({**KEY, "seed": 1})
  frame = pd.read_csv(path)
  assert list(frame.columns) == list(results.COLUMNS)
  assert len(frame) == 2 and frame["value"].tolist() == [0.9, 1.5]
  fresh = results.ResultLog(path, {"experiment": "e"})
  assert fresh.done(KEY)
  log.append({**KEY, "seed": 1}, [("x", 1, "u")])
  assert len(pd.read_csv(path)) == 3  # header written once


def test_row_cut_short_by_a_kill_is_ignored(tmp_path):
  path = tmp_path / "r.csv"
  log = results.ResultLog(path, {"experiment": "e"})
  log.append(KEY, [("a", 1, "u")])
  with open(path, "a") as f:
    f.write("e,mnist,compact,EdgeCNN1-3,3,True,cloud,240,0,,a,1")
  fresh = results.ResultLog(path, {"experiment": "e"})
  assert len(fresh.read()) == 1
  assert not fresh.done({**KEY, "num_images": 240})


def test_unknown_column_rejected(tmp_path):
  with pytest.raises(ValueError, match="Unknown result columns"):
    results.ResultLog(tmp_path / "r.csv", {"color": "red"})


def test_write_metadata(tmp_path):
  results.write_metadata(tmp_path / "m" / "f.json", {"seed": 1, "n": None})
  assert json.loads((tmp_path / "m" / "f.json").read_text()) == {
      "n": None, "seed": 1}


def test_invocation_history_appends_and_skips_a_line_cut_short(tmp_path):
  path = tmp_path / "r" / "x.invocations.jsonl"
  assert results.read_invocations(path) == []
  results.append_invocation(path, {"command": "a", "flags": {"n": 1}})
  with open(path, "a") as f:
    f.write('{"command": "cut sho')  # a process killed mid-write
  results.append_invocation(path, {"command": "b", "flags": {"n": 2}})
  results.append_invocation(path, {"command": "c", "flags": {"n": 3}})
  assert results.read_invocations(path) == [
      {"command": "a", "flags": {"n": 1}}, {"command": "b", "flags": {"n": 2}},
      {"command": "c", "flags": {"n": 3}}]
  assert path.read_text().endswith('"n": 3}}\n')


def test_old_schema_is_refused_then_migrated(tmp_path):
  path = tmp_path / "old.csv"
  old = [c for c in results.COLUMNS if c != "condition"]
  pd.DataFrame([{c: "x" for c in old}]).to_csv(path, index=False)
  log = results.ResultLog(path, {"experiment": "e"})
  with pytest.raises(ValueError, match="migrate"):
    log.append(KEY, [("a", 1, "u")])
  assert results.migrate(path)
  assert not results.migrate(path)
  log = results.ResultLog(path, {"experiment": "e"})
  log.append(KEY, [("a", 1, "u")])
  frame = pd.read_csv(path, keep_default_na=False)
  assert list(frame.columns) == list(results.COLUMNS) and len(frame) == 2


def test_sweep_starting_above_the_csvs_sweeps_is_named_as_another_run(tmp_path):
  from edgecnn import sweeps
  log = results.ResultLog(tmp_path / "r.csv", {"experiment": "edge_accuracy"})
  grid = sweeps.SweepSpec(preset="compact", num_images=(100, 500),
                          seeds=(0,), shared=(3,), models=(True,))
  assert sweeps.initialisation_clashes("cifar10", grid, log) is None
  for *_, key in sweeps.sweep_runs("cifar10", grid):
    log.append(key, [("wall_time", 1.0, "s")])
  # The whole list again, or a list that starts as low: nothing to say.
  assert sweeps.initialisation_clashes("cifar10", grid, log) is None
  assert sweeps.initialisation_clashes(
      "cifar10", dataclasses.replace(grid, num_images=(100, 5000)),
      log) is None
  # "The missing N=5,000" given alone trains on 5,000 true labels.
  alone = dataclasses.replace(grid, num_images=(5000,))
  message = sweeps.initialisation_clashes("cifar10", alone, log)
  assert message is not None
  assert "N=5,000 is an update phase on 100 true labels and 4,900 uploads " \
         "labelled by CloudCNN (labels=cloud)" in message
  assert "--num_images=100,5000" in message
  (key,) = [k for *_, k in sweeps.sweep_runs("cifar10", alone)]
  assert key["labels"] == "true" and not log.done(key)
  # EdgeCNN0 always trains on true labels; other datasets and presets are
  # other sweeps.
  assert sweeps.initialisation_clashes(
      "cifar10", dataclasses.replace(alone, models=(False,)), log) is None
  assert sweeps.initialisation_clashes("mnist", alone, log) is None
  assert sweeps.initialisation_clashes(
      "cifar10", dataclasses.replace(alone, preset="paper"), log) is None


def test_plan_sweep_marks_done_runs_and_estimates_from_other_seeds(tmp_path):
  from edgecnn import sweeps
  log = results.ResultLog(tmp_path / "r.csv", {"experiment": "edge_accuracy"})
  spec = sweeps.SweepSpec(preset="compact", num_images=(20, 40),
                          seeds=(0, 1, 2), shared=(3,), models=(True,))
  runs = list(sweeps.sweep_runs("mnist", spec))
  # Seed, then N, then m, then model; EdgeCNN1 above the smallest N uses
  # the cloud's labels.
  assert [(s, n, k["labels"]) for s, n, _, _, k in runs] == [
      (0, 20, "true"), (0, 40, "cloud"), (1, 20, "true"), (1, 40, "cloud"),
      (2, 20, "true"), (2, 40, "cloud")]
  for (seed, n, *_ , key), wall in zip(runs[:3], [10.0, 100.0, 30.0]):
    log.append(key, [("wall_time", wall, "s"), ("epochs", 5, "epochs")])
  plan = sweeps.plan_sweep("mnist", spec, log)
  assert plan["done"].tolist() == [True, True, True, False, False, False]
  todo = plan[~plan["done"]]
  # N=20 ran for seeds 0 and 1 (10 s, 30 s): median 20 s; N=40 only seed 0.
  assert todo["est_s"].tolist() == [100.0, 20.0, 100.0]
  assert todo["est_from"].tolist() == ["mnist"] * 3
  tuned = dataclasses.replace(spec, train_shared=True)
  assert {k.get("condition") for *_, k in sweeps.sweep_runs("mnist", tuned)} \
      == {"shared=trained"}
  both = dataclasses.replace(tuned, head_pool="paper")
  assert both.condition == "head_pool=paper;shared=trained"
  assert not sweeps.plan_sweep("mnist", tuned, log)["done"].any()
  with pytest.raises(ValueError, match=r"EdgeCNN0 trains every layer.*"
                     r"Received: models=\(True, False\)"):
    dataclasses.replace(spec, models=(True, False), train_shared=True)
  other = dataclasses.replace(spec, head_pool="paper")
  ablation = sweeps.plan_sweep("mnist", other, log)
  # Not done, and, with no run under its condition anywhere, estimated from
  # the same run without it, said so.
  assert not ablation["done"].any()
  assert ablation["est_s"].tolist() == [20.0, 100.0] * 3
  assert ablation["est_from"].tolist() == ["mnist without head_pool=paper"] * 6
  # A time under the condition itself comes first, from another seed too.
  first = next(k for *_, k in sweeps.sweep_runs("mnist", other))
  log.append(first, [("wall_time", 60.0, "s")])
  ablation = sweeps.plan_sweep("mnist", other, log)
  assert ablation["est_s"].tolist() == [60.0, 100.0] * 3
  assert ablation["est_from"].tolist() == [
      "mnist", "mnist without head_pool=paper"] * 3
  assert sweeps.plan_sweep("cifar10", other, log)["est_s"].isna().all()
  # A run not yet on a dataset borrows the time of a dataset of the same
  # image shape and size (MNIST for Fashion-MNIST), never CIFAR-10's, and
  # never when the dataset has its own.
  fashion = sweeps.plan_sweep("fashion_mnist", spec, log)
  assert not fashion["done"].any()
  assert fashion["est_s"].tolist() == [20.0, 100.0] * 3
  assert fashion["est_from"].tolist() == ["mnist"] * 6
  assert sweeps.plan_sweep("cifar10", spec, log)["est_s"].isna().all()
  fashion_key = {**runs[0][4], "dataset": "fashion_mnist"}
  log.append(fashion_key, [("wall_time", 7.0, "s")])
  fashion = sweeps.plan_sweep("fashion_mnist", spec, log)
  assert fashion["est_s"].tolist()[1:] == [100.0, 7.0, 100.0, 7.0, 100.0]
  assert fashion["est_from"].tolist()[1:] == ["mnist", "fashion_mnist"] * 2 + [
      "mnist"]
  # Another CSV's times come after this one's, both datasets: an ablation's
  # empty CSV borrows them, named by file; its own time comes first.
  ablation_log = results.ResultLog(tmp_path / "a.csv",
                                   {"experiment": "edge_accuracy"})
  borrowed = sweeps.plan_sweep("fashion_mnist", spec, ablation_log, [log])
  assert borrowed["est_s"].tolist() == [7.0, 100.0] * 3
  assert borrowed["est_from"].tolist() == [
      "fashion_mnist in r.csv", "mnist in r.csv"] * 3
  ablation_log.append({**runs[0][4], "dataset": "fashion_mnist"},
                      [("wall_time", 3.0, "s")])
  ablation_log.append(runs[1][4], [("wall_time", 50.0, "s")])
  own = sweeps.plan_sweep("fashion_mnist", spec, ablation_log, [log])
  assert own["est_s"].tolist()[1:] == [50.0, 3.0, 50.0, 3.0, 50.0]
  assert own["est_from"].tolist()[1:] == ["mnist", "fashion_mnist"] * 2 + [
      "mnist"]


def _claim_file(log, key, **record):
  path = log.claim_path(key)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record))
  return path


def test_a_claim_is_exclusive_until_released(tmp_path):
  path = tmp_path / "r.csv"
  first = results.ResultLog(path, {"experiment": "e"})
  second = results.ResultLog(path, {"experiment": "e"})
  assert first.claim(KEY)
  assert first.claim_path(KEY).parent == tmp_path / "r.csv.claims"
  assert not second.claim(KEY)
  holder = second.claimed_by(KEY)
  assert holder["pid"] == os.getpid() and holder["key"]["num_images"] == "120"
  assert second.claim({**KEY, "seed": 1})  # another run is free
  second.release(KEY)  # not its claim: stays
  assert first.claim_path(KEY).exists()
  first.release(KEY)
  assert not first.claim_path(KEY).exists() and second.claimed_by(KEY) is None
  assert second.claim(KEY)


def test_a_claim_of_a_finished_run_is_refused_and_left_nowhere(tmp_path):
  path = tmp_path / "r.csv"
  stale_view = results.ResultLog(path, {"experiment": "e"})
  assert not stale_view.done(KEY)  # reads (and caches) the empty file
  results.ResultLog(path, {"experiment": "e"}).append(KEY, [("a", 1, "u")])
  assert not stale_view.claim(KEY)  # it rereads before training
  assert stale_view.done(KEY)
  assert not stale_view.claim_path(KEY).exists()


def test_a_dead_process_claim_is_taken_over_and_a_live_one_kept(tmp_path):
  log = results.ResultLog(tmp_path / "r.csv", {"experiment": "e"})
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  _claim_file(log, KEY, host=socket.gethostname(), pid=gone.pid)
  assert log.claimed_by(KEY) is None
  assert log.claim(KEY)
  assert json.loads(log.claim_path(KEY).read_text())["pid"] == os.getpid()
  other = {**KEY, "seed": 1}
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _claim_file(log, other, host=socket.gethostname(), pid=alive.pid)
    assert not log.claim(other)
    assert log.claimed_by(other)["pid"] == alive.pid
  finally:
    alive.kill()
    alive.wait()
  assert log.claim(other)  # its holder is gone now


def test_two_sweeps_taking_over_one_dead_claim_at_once_get_it_once(
    tmp_path, monkeypatch):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  first = results.ResultLog(tmp_path / "r.csv", {"experiment": "e"})
  second = results.ResultLog(tmp_path / "r.csv", {"experiment": "e"})
  _claim_file(first, KEY, host=socket.gethostname(), pid=gone.pid)
  judged, second_done = threading.Event(), threading.Event()
  real = results.live_holder

  def slow_judge(path):
    holder = real(path)
    if threading.current_thread().name == "first" and not judged.is_set():
      # The first sweep has found the claim dead; the second tries now.
      judged.set()
      second_done.wait(timeout=2)  # unlocked, the second finishes meanwhile
    return holder

  monkeypatch.setattr(results, "live_holder", slow_judge)
  got = {}

  def take(name, log):
    got[name] = log.claim(KEY)

  a = threading.Thread(target=take, args=("first", first), name="first")
  a.start()
  assert judged.wait(timeout=30)
  take("second", second)  # waits for the first's takeover to end
  second_done.set()
  a.join(timeout=30)
  assert got == {"first": True, "second": False}
  assert json.loads(first.claim_path(KEY).read_text())["token"] == \
      first._token
  first.release(KEY)
  assert second.claim(KEY)


def test_another_hosts_or_a_fresh_unreadable_claim_is_trusted(tmp_path):
  log = results.ResultLog(tmp_path / "r.csv", {"experiment": "e"})
  _claim_file(log, KEY, host="not-" + socket.gethostname(), pid=1)
  assert not log.claim(KEY)
  half = log.claim_path({**KEY, "seed": 1})
  half.write_text("{half-writ")  # being written, or its writer was killed
  assert not log.claim({**KEY, "seed": 1})
  old = time.time() - results.UNREADABLE_CLAIM_STALE_S - 1
  os.utime(half, (old, old))
  assert log.claimed_by({**KEY, "seed": 1}) is None
  assert log.claim({**KEY, "seed": 1})  # a killed writer's: taken over
  log.claim_path(KEY).unlink()  # what the docstring tells a user to do
  assert log.claim(KEY)
