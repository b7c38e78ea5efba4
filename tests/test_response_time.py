"""The response-time experiment's quick setting, end to end."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from edgecnn import netem
from edgecnn import response_time as rt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_links_and_images():
  lte = rt.make_links("lte")
  assert lte.edge.up_bytes_per_s == 1_000_000
  assert lte.cloud.up_bytes_per_s == 450_000
  assert lte.cloud.delay_s == pytest.approx(0.035)
  for kb in (20, 60, 512):
    assert len(rt.make_image(kb * 1000)) == pytest.approx(kb * 1000, rel=0.05)
  with pytest.raises(ValueError, match="lte"):
    rt.make_links("5g")


def _run(root, *extra, with_log=False):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  csv = root / f"rt-{len(list(root.glob('rt-*.csv')))}.csv"  # one per run
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.response_time",
       f"--cloud_dir={root / 'cloud'}", f"--data_dir={root / 'data'}",
       f"--workdir={root / 'w'}", f"--results_csv={csv}", "--sizes_kb=20,100",
       "--repeats=2", "--edge_max_epochs=1", "--num_labelled=40", *extra],
      cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = pd.read_csv(csv, keep_default_na=False)
  return (rows, proc.stderr) if with_log else rows


def test_quick_run_proxy(tiny_cloud):
  rows = _run(tiny_cloud, "--emulation=proxy", "--link=lte")
  rt_rows = rows[rows.metric == "response_time_median"]
  assert sorted(set(rt_rows.model)) == ["CloudCNN", "EdgeCNN1-3"]
  assert len(rt_rows) == 4
  assert rt_rows.condition.str.contains("emulation=proxy").all()
  up = rows[rows.metric == "upload_time_median"].set_index(["model", "condition"])
  # 100 KB up the LTE link to the edge takes about 0.1 s; to the cloud
  # (450 KB/s core) about 0.22 s plus delays.
  edge = up.loc[("EdgeCNN1-3", "link=lte;size_kb=100;emulation=proxy;image=png")]
  cloud = up.loc[("CloudCNN", "link=lte;size_kb=100;emulation=proxy;image=png")]
  assert 0.08 < edge.value < 0.2 and 0.2 < cloud.value < 0.4


@pytest.mark.skipif(not netem.netns_available()[0], reason="no network namespaces")
def test_quick_run_netns_with_delays_and_no_namespace_left(tiny_cloud):
  import re
  import subprocess as sp
  rows, log = _run(tiny_cloud, "--emulation=netns", "--link=lte", with_log=True)
  label = "netns" if netem.netem_available() else "netns-relay"
  assert rows.condition.str.contains(f"emulation={label};").all()
  up = rows[rows.metric == "upload_time_median"].set_index(["model", "condition"])
  # The same bounds as the proxy's run: the emulations agree.
  edge = up.loc[("EdgeCNN1-3", f"link=lte;size_kb=100;emulation={label};image=png")]
  cloud = up.loc[("CloudCNN", f"link=lte;size_kb=100;emulation={label};image=png")]
  assert 0.08 < edge.value < 0.2 and 0.2 < cloud.value < 0.4
  # The run left none of its own namespaces behind (named from its log, so
  # that tests making namespaces in parallel, test_netem.py, do not count).
  names = re.search(r"network namespaces: (.*)", log).group(1).split()
  assert len(names) == 3 and all(n.startswith("ec") for n in names), names
  after = sp.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
  assert not {l.split()[0] for l in after.splitlines()} & set(names), after
