"""Emulated network links for the response-time study (Sec. 4.2).

Two ways to make a phone's link to the edge and to the cloud behave like
the real ones, with the same ``LinkSpec``:

  * ``NetnsTopology`` (needs root and iproute2): Linux network namespaces
    ``phone``, ``edge`` and ``cloud`` joined by veth pairs, each direction
    shaped by a netem qdisc (``delay`` + ``rate``) on its sending side. The
    kernel does the shaping; traffic stays on this machine. Namespaces are
    deleted on exit, on exceptions and on SIGTERM/SIGINT. On kernels built
    without ``sch_netem`` (some VM kernels) the kernel shapes the rate with
    tbf and a delay-only relay inside the server's namespace adds the
    one-way delay each way (``NetnsTopology.endpoint``).
  * ``ShapingProxy`` (no privileges): a TCP proxy on loopback that forwards
    each direction through a token bucket at the link's rate and holds every
    chunk for the one-way delay.

A test checks that both deliver a fixed payload in the time the spec says,
within a stated tolerance.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

KB = 1000
MB = 1000 * 1000


@dataclasses.dataclass(frozen=True)
class LinkSpec:
  """A bidirectional link: rates in bytes/s, one-way delay in seconds."""
  up_bytes_per_s: float
  down_bytes_per_s: float
  delay_s: float = 0.0

  def __post_init__(self):
    if self.up_bytes_per_s <= 0 or self.down_bytes_per_s <= 0 or self.delay_s < 0:
      raise ValueError(f"Rates must be > 0 and delay >= 0. Received: {self}")

  def transfer_time(self, num_bytes: int, direction: str = "up") -> float:
    rate = self.up_bytes_per_s if direction == "up" else self.down_bytes_per_s
    return self.delay_s + num_bytes / rate


def series(*links: LinkSpec) -> LinkSpec:
  """Links in series: the slowest rate each way, the delays added."""
  return LinkSpec(min(l.up_bytes_per_s for l in links),
                  min(l.down_bytes_per_s for l in links),
                  sum(l.delay_s for l in links))


# --- the token-bucket proxy -------------------------------------------------------

class _Shaper:
  """Delays and rate-limits one direction of one connection."""

  def __init__(self, rate: float, delay: float, chunk: int = 4096):
    self.rate, self.delay, self.chunk = rate, delay, chunk
    self.free_at = 0.0  # when the link finishes sending what it already has

  async def pipe(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
      while True:
        due, data = await queue.get()
        if data is None:
          break
        wait = due - loop.time()
        if wait > 0:
          await asyncio.sleep(wait)
        writer.write(data)
        await writer.drain()
      if writer.can_write_eof():
        writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
      while True:
        data = await reader.read(self.chunk)
        if not data:
          break
        # Serialisation at the link rate, then propagation delay.
        start = max(loop.time(), self.free_at)
        self.free_at = start + len(data) / self.rate
        await queue.put((self.free_at + self.delay, data))
        ahead = self.free_at - loop.time()
        if ahead > 0.05:  # keep the sender close to the link (backpressure)
          await asyncio.sleep(ahead - 0.05)
    finally:
      await queue.put((0.0, None))
      await delivery


class ShapingProxy:
  """Forwards ``127.0.0.1:<port>`` to ``target`` through an emulated link.

  Args:
    target: (host, port) of the real server.
    link: the LinkSpec; "up" is client -> server.
  """

  def __init__(self, target: tuple[str, int], link: LinkSpec, *,
               listen: tuple[str, int] = ("127.0.0.1", 0),
               netns: str | None = None):
    self.target, self.link, self.listen, self.netns = target, link, listen, netns
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._entered = threading.Event()
    self._error: BaseException | None = None
    self._server = None
    self.port = None

  def _run(self) -> None:
    try:
      if self.netns is not None:  # this thread's sockets live there
        _enter_netns(self.netns)
    except OSError as e:
      self._error = e
      return
    finally:
      self._entered.set()
    self._loop.run_forever()

  async def _handle(self, c_reader, c_writer):
    try:
      s_reader, s_writer = await asyncio.open_connection(*self.target)
    except OSError:
      c_writer.close()
      return
    up = _Shaper(self.link.up_bytes_per_s, self.link.delay_s)
    down = _Shaper(self.link.down_bytes_per_s, self.link.delay_s)
    try:
      await asyncio.gather(up.pipe(c_reader, s_writer),
                           down.pipe(s_reader, c_writer))
    except (ConnectionError, OSError):
      pass
    finally:
      for w in (s_writer, c_writer):
        w.close()

  def start(self) -> "ShapingProxy":
    self._thread.start()
    self._entered.wait(10)
    if self._error is not None:
      raise RuntimeError(f"Cannot enter network namespace {self.netns}: "
                         f"{self._error}") from self._error
    fut = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(self._handle, *self.listen), self._loop)
    self._server = fut.result(10)
    self.port = self._server.sockets[0].getsockname()[1]
    return self

  @property
  def address(self) -> tuple[str, int]:
    return self.listen[0], self.port

  def stop(self) -> None:
    async def shutdown():
      if self._server is not None:
        self._server.close()
      tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
      for t in tasks:
        t.cancel()
      await asyncio.gather(*tasks, return_exceptions=True)
    if self._thread.is_alive():
      asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout=5)
    self._loop.close()


_CLONE_NEWNET = 0x40000000
UNLIMITED = 1e12  # bytes/s: a link that only delays


def _enter_netns(name: str) -> None:
  """Moves the calling thread (only) into network namespace ``name``:
  sockets it creates afterwards live there."""
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
  try:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
      err = ctypes.get_errno()
      raise OSError(err, f"setns: {os.strerror(err)}")
  finally:
    os.close(fd)


# --- kernel shaping in network namespaces -------------------------------------------

def netns_available() -> tuple[bool, str]:
  """(True, "") if this process may create namespaces and netem qdiscs."""
  if os.geteuid() != 0:
    return False, "needs root"
  for tool in ("ip", "tc"):
    if shutil.which(tool) is None:
      return False, f"{tool} (iproute2) not found"
  name = f"ecprobe{uuid.uuid4().hex[:6]}"
  try:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)
  except (subprocess.CalledProcessError, OSError) as e:
    return False, f"cannot create network namespaces ({e})"
  return True, ""


def _run(*cmd: str) -> None:
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


_NETEM: bool | None = None


def netem_available() -> bool:
  """Whether the kernel has the netem qdisc (delay); tbf (rate) is assumed."""
  global _NETEM
  if _NETEM is None:
    name = f"ecq{uuid.uuid4().hex[:6]}"
    try:
      _run("ip", "netns", "add", name)
      _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo",
           "root", "netem", "delay", "1ms")
      _NETEM = True
    except RuntimeError:
      _NETEM = False
    finally:
      subprocess.run(["ip", "netns", "del", name], capture_output=True)
  return _NETEM


def _shape(ns: str, dev: str, rate: float, delay: float) -> None:
  """Shapes what ``dev`` sends: netem (delay + rate) where the kernel has it,
  else tbf (rate only; NetnsTopology.endpoint then adds the delay)."""
  # Large GSO segments would pass a token bucket in one burst.
  _run("ip", "netns", "exec", ns, "ip", "link", "set", "dev", dev,
       "gso_max_size", "1500")
  if netem_available():
    _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
         "netem", "delay", f"{int(delay * 1e6)}us", "rate",
         f"{int(rate * 8)}bit", "limit", "100000")
    return
  burst = max(4 * 1514, int(rate / 250))
  _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
       "tbf", "rate", f"{int(rate * 8)}bit", "burst", str(burst), "latency",
       "2s")


_LIVE: set[str] = set()


def _cleanup_all() -> None:
  for ns in list(_LIVE):
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    _LIVE.discard(ns)


atexit.register(_cleanup_all)


class NetnsTopology:
  """Namespaces phone, edge and cloud joined by shaped veth pairs.

  Links: phone<->edge (``edge_link``), phone<->cloud (``cloud_link``) and
  edge<->cloud (``backhaul``, for Alg. 1 and labels). Each pair gets a /30 in
  10.77.<k>.0; ``address(host, peer)`` names the address ``host`` has on its
  link to ``peer``.

  Use as a context manager: the namespaces are deleted on exit, on
  exceptions, and on SIGTERM/SIGINT while it is open.

  Clients reach a service through ``endpoint(host, peer, port)``: the
  service's own address where netem delays in the kernel, else a delay-only
  relay in the service's namespace (the kernel's tbf still sets the rate).
  """

  PAIRS = (("phone", "edge"), ("phone", "cloud"), ("edge", "cloud"))

  def __init__(self, edge_link: LinkSpec, cloud_link: LinkSpec,
               backhaul: LinkSpec | None = None):
    tag = uuid.uuid4().hex[:6]
    self.ns = {h: f"ec{h}{tag}" for h in ("phone", "edge", "cloud")}
    self.links = {("phone", "edge"): edge_link, ("phone", "cloud"): cloud_link,
                  ("edge", "cloud"): backhaul}
    self._addr: dict[tuple[str, str], str] = {}
    self._old_handlers = {}
    self._relays: dict[tuple[str, str, int], ShapingProxy] = {}

  @property
  def delay_in(self) -> str:
    """Where the one-way delays are added: "netem" or "relay"."""
    return "netem" if netem_available() else "relay"

  def endpoint(self, host: str, peer: str, port: int) -> tuple[str, int]:
    """The (address, port) at which ``peer`` reaches ``host``'s service on
    ``port`` over their shaped link. The service must listen on 0.0.0.0 or
    127.0.0.1 in its namespace."""
    link = self.links.get((host, peer)) or self.links.get((peer, host))
    address = self.address(host, peer)
    if link is None or link.delay_s == 0 or self.delay_in == "netem":
      return address, port
    key = (host, peer, port)
    if key not in self._relays:
      self._relays[key] = ShapingProxy(
          ("127.0.0.1", port), LinkSpec(UNLIMITED, UNLIMITED, link.delay_s),
          listen=(address, 0), netns=self.ns[host]).start()
    return self._relays[key].address

  def address(self, host: str, peer: str) -> str:
    return self._addr[(host, peer)]

  def exec_prefix(self, host: str) -> list[str]:
    return ["ip", "netns", "exec", self.ns[host]]

  def __enter__(self) -> "NetnsTopology":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old_handlers[sig] = signal.getsignal(sig)
      signal.signal(sig, self._on_signal)
    try:
      for ns in self.ns.values():
        _run("ip", "netns", "add", ns)
        _LIVE.add(ns)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
      for k, (a, b) in enumerate(self.PAIRS):
        va, vb = f"v{k}a{self.ns[a][-6:]}", f"v{k}b{self.ns[b][-6:]}"
        _run("ip", "link", "add", va, "netns", self.ns[a], "type", "veth",
             "peer", "name", vb, "netns", self.ns[b])
        for ns, dev, ip in ((self.ns[a], va, f"10.77.{k}.1"),
                            (self.ns[b], vb, f"10.77.{k}.2")):
          _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/30",
               "dev", dev)
          _run("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        self._addr[(a, b)], self._addr[(b, a)] = f"10.77.{k}.1", f"10.77.{k}.2"
        link = self.links[(a, b)]
        if link is not None:
          _shape(self.ns[a], va, link.up_bytes_per_s, link.delay_s)
          _shape(self.ns[b], vb, link.down_bytes_per_s, link.delay_s)
    except BaseException:
      self.close()
      raise
    return self

  def _on_signal(self, signum, frame):
    self.close()
    handler = self._old_handlers.get(signum)
    if callable(handler):
      handler(signum, frame)
    else:
      raise KeyboardInterrupt

  def close(self) -> None:
    relays, self._relays = list(self._relays.values()), {}
    for relay in relays:
      try:
        relay.stop()
      except Exception:  # noqa: BLE001 - the namespaces must go regardless
        pass
    for ns in self.ns.values():
      if ns in _LIVE:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _LIVE.discard(ns)
    for sig, handler in self._old_handlers.items():
      signal.signal(sig, handler)
    self._old_handlers = {}

  def __exit__(self, *exc) -> None:
    self.close()

  def live_namespaces(self) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True,
                         text=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0] in self.ns.values()]


def timed_transfer(host: str, port: int, payload: bytes, *,
                   source: str | None = None) -> tuple[float, float]:
  """Sends ``payload`` to an echo-length server and waits for its 8-byte
  reply; returns (seconds until the reply, bytes). Used by the shaper tests."""
  with socket.create_connection((host, port), timeout=120,
                                source_address=(source, 0) if source else None) as s:
    start = time.perf_counter()
    s.sendall(len(payload).to_bytes(8, "big") + payload)
    reply = b""
    while len(reply) < 8:
      chunk = s.recv(8 - len(reply))
      if not chunk:
        break
      reply += chunk
    return time.perf_counter() - start, int.from_bytes(reply, "big")


def serve_echo_length(host: str, port: int, ready_file: str | None = None) -> None:
  """Test peer of timed_transfer: reads an 8-byte length and that many bytes,
  answers with the number of bytes it got. Serves until killed."""
  with socket.socket() as srv:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen()
    if ready_file:
      with open(ready_file, "w") as f:
        f.write(str(srv.getsockname()[1]))
    while True:
      conn, _ = srv.accept()
      with conn:
        head = b""
        while len(head) < 8:
          head += conn.recv(8 - len(head))
        want, got = int.from_bytes(head, "big"), 0
        while got < want:
          chunk = conn.recv(min(65536, want - got))
          if not chunk:
            break
          got += len(chunk)
        conn.sendall(got.to_bytes(8, "big"))
