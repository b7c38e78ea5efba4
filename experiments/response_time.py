r"""Response time, mobile -> edge vs mobile -> cloud, over emulated LTE or WiFi
(Sec. 4.2, Figs. 4-6).

Starts the cloud service (CloudCNN) and an edge service (EdgeCNN1-3,
initialised from the cloud over HTTP) as separate processes, joins them to a
phone through emulated links, and times --repeats uploads of images of each
size in --sizes_kb to both. Rows (median and half-range per target, size and
time) go to results/response_time.csv; `condition` holds the link, size,
emulation and image format.

Emulation (--emulation): `netns` puts phone, edge and cloud in Linux network
namespaces joined by veth pairs shaped in the kernel (needs root and
iproute2): netem for delay and rate, or, on kernels without sch_netem, tbf
for the rate and a delay-only relay in each server's namespace for the
delay (recorded as emulation=netns-relay); `proxy` runs everything on
loopback and shapes with a token-bucket TCP proxy; `auto` (default) uses
netns where namespaces can be made, else the proxy.

  python -m experiments.response_time --link=lte --cloud_dir=workdir/cloud/...
"""

from __future__ import annotations

import logging
import pathlib
import secrets

from absl import app
from absl import flags

from experiments import cli
from experiments import common
from experiments import services

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
netem = cli.lazy_import("edgecnn.netem")
rt = cli.lazy_import("edgecnn.response_time")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("dataset", "data_dir", "cloud", "results")

LINK = flags.DEFINE_enum("link", "lte", ["lte", "wifi"], "Phone's radio link.")
EMULATION = flags.DEFINE_enum("emulation", "auto", ["auto", "netns", "proxy"],
                              "How the links are emulated (see module doc).")
SIZES = flags.DEFINE_list("sizes_kb", ["20", "60", "128", "256", "512", "1024"],
                          "Image sizes to upload, in KB (1 KB = 1000 bytes).")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed uploads per size and target.")
IMAGE_FORMAT = flags.DEFINE_enum("image_format", "png", ["png", "jpeg"],
                                 "Format of the uploaded images.")
EDGE_DELAY = flags.DEFINE_float("edge_delay_ms", 5.0,
                                "One-way delay phone <-> edge (one hop).")
CORE_DELAY = flags.DEFINE_float("core_delay_ms", 30.0,
                                "Extra one-way delay of the core network.")
CORE_RATE = flags.DEFINE_float("core_kb_per_s", 450.0,
                               "Core-network throughput to the cloud, KB/s.")
LTE_UP = flags.DEFINE_float("lte_up_kb_per_s", 1000.0, "LTE uplink (paper).")
LTE_DOWN = flags.DEFINE_float("lte_down_kb_per_s", 1360.0, "LTE downlink (paper).")
WIFI = flags.DEFINE_float("wifi_kb_per_s", 9000.0, "WiFi, both ways (paper).")
NUM_SHARED = flags.DEFINE_integer("num_shared", 3, "m of the edge's EdgeCNN.")
NUM_LABELLED = flags.DEFINE_integer("num_labelled", 120,
                                    "Labelled images of the edge's Alg. 1.")
EDGE_EPOCHS = flags.DEFINE_integer(
    "edge_max_epochs", 5, "Epochs of the edge's initial training (its "
    "accuracy does not change the timings).")


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dataset_name = common.DATASET.value
  cloud_dir = common.cloud_directory(dataset_name)
  if not cloud_model.is_trained(cloud_dir):
    raise app.UsageError(f"No trained CloudCNN in {cloud_dir}; run "
                         "experiments.train_cloud or pass --cloud_dir.")
  info = cloud_model.load_dataset_info(cloud_dir)
  sizes = [float(s) for s in SIZES.value]
  links = rt.make_links(
      LINK.value, edge_delay_s=EDGE_DELAY.value / 1000,
      core_delay_s=CORE_DELAY.value / 1000,
      core_bytes_per_s=CORE_RATE.value * rt.KB, lte_up=LTE_UP.value * rt.KB,
      lte_down=LTE_DOWN.value * rt.KB, wifi=WIFI.value * rt.KB)
  mode = EMULATION.value
  netns_ok, why = netem.netns_available()
  if mode == "auto":
    mode = "netns" if netns_ok else "proxy"
    logging.info("emulation: %s%s", mode, "" if mode == "netns" else
                 f" (kernel shaping: {why})")
  elif mode == "netns" and not netns_ok:
    raise app.UsageError(f"--emulation=netns is unavailable here: {why}.")
  needs_delay = links.edge.delay_s > 0 or links.cloud.delay_s > 0
  label = mode
  if mode == "netns" and needs_delay and not netem.netem_available():
    label = "netns-relay"  # tbf rate in the kernel, delays in a relay
    logging.info("this kernel has no sch_netem: tbf shapes the rates and a "
                 "relay in each server's namespace adds the delays")

  log = common.result_log("response_time")
  conditions = {kb: f"link={LINK.value};size_kb={kb:g};emulation={label};"
                    f"image={IMAGE_FORMAT.value}" for kb in sizes}
  model_names = {"edge": f"EdgeCNN1-{NUM_SHARED.value}", "cloud": "CloudCNN"}
  base = {"dataset": dataset_name, "labels": "", "num_images": REPEATS.value,
          **common.cloud_row_key(cloud_dir)}
  keys = {(t, kb): {**base, "model": model_names[t],
                    "num_shared": NUM_SHARED.value if t == "edge" else 15,
                    "pretrained": t == "edge", "condition": conditions[kb]}
          for t in ("edge", "cloud") for kb in sizes}
  if all(log.done(k) for k in keys.values()):
    logging.info("%s already has these rows.", log.path)
    return
  common.save_flags(log, f"{LINK.value}-{label}")

  work = pathlib.Path(common.WORKDIR.value) / "response_time" / f"{LINK.value}-{label}"
  work.mkdir(parents=True, exist_ok=True)
  token = secrets.token_urlsafe(16)
  procs = []
  topo = None
  service_log = open(work / "services.log", "a")
  try:
    if mode == "netns":
      topo = netem.NetnsTopology(links.edge, links.cloud).__enter__()
      logging.info("network namespaces: %s", " ".join(topo.ns.values()))
      cloud_prefix, edge_prefix = topo.exec_prefix("cloud"), topo.exec_prefix("edge")
      cloud_bind, edge_bind, cport, eport = "0.0.0.0", "0.0.0.0", 8500, 8501
      cloud_for_edge = topo.address("cloud", "edge")
    else:
      cloud_prefix = edge_prefix = []
      cloud_bind = edge_bind = cloud_for_edge = "127.0.0.1"
      cport, eport = services.free_port(), services.free_port()
    procs.append(services.start(
        cloud_prefix, "edgecnn.cloud", f"--cloud_dir={cloud_dir}",
        f"--workdir={work / 'cloud'}", f"--host={cloud_bind}", f"--port={cport}",
        f"--token={token}", log=service_log))
    procs.append(services.start(
        edge_prefix, "edgecnn.edge", "--edge_id=phone-edge",
        f"--cloud_url=http://{cloud_for_edge}:{cport}", f"--cloud_token={token}",
        f"--num_shared={NUM_SHARED.value}", f"--dataset={dataset_name}",
        f"--num_labelled={NUM_LABELLED.value}",
        *([f"--data_dir={common.DATA_DIR.value}"] if common.DATA_DIR.value else []),
        f"--workdir={work / 'edge'}", f"--max_epochs={EDGE_EPOCHS.value}",
        f"--host={edge_bind}", f"--port={eport}", "--quiet_bytes_per_s=0",
        log=service_log))
    spec = {"sizes_kb": sizes, "repeats": REPEATS.value,
            "fmt": IMAGE_FORMAT.value, "channels": info.image_shape[2]}
    if mode == "netns":
      ehost, eport_seen = topo.endpoint("edge", "phone", eport)
      chost, cport_seen = topo.endpoint("cloud", "phone", cport)
      spec["targets"] = {
          "edge": {"host": ehost, "port": eport_seen, "path": "/v1/classify"},
          "cloud": {"host": chost, "port": cport_seen, "path": "/v1/classify",
                    "token": token}}
      logging.info("phone in its namespace; waiting for the services")
      services.wait_healthy(
          procs, [(t["host"], t["port"]) for t in spec["targets"].values()],
          topo.exec_prefix("phone"), work / "services.log")
      samples = rt.run_in_namespace(topo.exec_prefix("phone"), spec)
    else:
      services.wait_healthy(procs, [("127.0.0.1", cport), ("127.0.0.1", eport)],
                            [], work / "services.log")
      proxies = [netem.ShapingProxy(("127.0.0.1", eport), links.edge).start(),
                 netem.ShapingProxy(("127.0.0.1", cport), links.cloud).start()]
      try:
        spec["targets"] = {
            "edge": {"host": "127.0.0.1", "port": proxies[0].port,
                     "path": "/v1/classify"},
            "cloud": {"host": "127.0.0.1", "port": proxies[1].port,
                      "path": "/v1/classify", "token": token}}
        samples = rt.run_phone(spec["targets"], sizes, REPEATS.value,
                               fmt=IMAGE_FORMAT.value,
                               channels=info.image_shape[2])
      finally:
        for p in proxies:
          p.stop()
  finally:
    services.stop(procs)
    if topo is not None:
      topo.close()
    service_log.close()

  for row in rt.summarise(samples):
    key = keys[(row["target"], row["size_kb"])]
    log.append(key, [(f"{row['metric']}_median", row["median"], "s"),
                     (f"{row['metric']}_spread", row["spread"], "s"),
                     ("image_bytes", row["bytes"], "bytes")])
  for kb in sizes:
    e = [r for r in rt.summarise(samples) if r["size_kb"] == kb and
         r["metric"] == "response_time"]
    by = {r["target"]: r["median"] for r in e}
    logging.info("%s %g KB: response edge %.3f s, cloud %.3f s (%+.1f%%)",
                 LINK.value, kb, by["edge"], by["cloud"],
                 100 * (by["edge"] - by["cloud"]) / by["cloud"])


if __name__ == "__main__":
  cli.run(main)
