"""When may the edge upload objects to the cloud? (Alg. 2, step 1)

The paper uploads "when the core network load is low". An ``UploadPolicy``
answers ``allow(now)``; the edge asks it before every batch. Policies:

  * ``QuietNetworkPolicy`` (default): measures the edge's WAN traffic over a
    sliding window and allows uploads while its rate stays below a threshold.
    The traffic comes from a ``TrafficMonitor``: by default the bytes this
    edge itself exchanges (users' uploads and answers, its own transfers to
    the cloud); optionally a network interface's counters from
    /proc/net/dev, which include everyone's traffic on that link.
  * ``IdleWindowPolicy``: allows uploads only inside configured hours.
  * ``AllOf``: all of several policies must allow (e.g. quiet and at night).
  * ``AlwaysPolicy``: no restriction (tests, benchmarks).

Write your own by subclassing UploadPolicy and passing it to the edge.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import pathlib
import threading
import time
from typing import Callable, Sequence


class TrafficMonitor:
  """Sliding-window byte counter of the edge's WAN traffic.

  Args:
    window_s: length of the window the rate is measured over.
    interface: optional network interface whose /proc/net/dev rx+tx bytes
      are sampled in addition to the bytes recorded in-process.
    clock: time source (tests inject one).
  """

  def __init__(self, window_s: float = 10.0, interface: str | None = None,
               clock: Callable[[], float] = time.monotonic):
    if window_s <= 0:
      raise ValueError(f"`window_s` must be > 0. Received: window_s={window_s}")
    self.window_s = window_s
    self.interface = interface
    self.clock = clock
    self._events: collections.deque[tuple[float, int]] = collections.deque()
    self._lock = threading.Lock()
    self._last_if: tuple[float, int] | None = None
    if interface and self._interface_bytes() is None:
      raise ValueError(f"Network interface {interface!r} not found in "
                       "/proc/net/dev.")

  def _interface_bytes(self) -> int | None:
    try:
      for line in pathlib.Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, rest = line.split(":", 1)
        if name.strip() == self.interface:
          fields = rest.split()
          return int(fields[0]) + int(fields[8])
    except OSError:
      return None
    return None

  def record(self, num_bytes: int) -> None:
    with self._lock:
      self._events.append((self.clock(), int(num_bytes)))

  def rate(self) -> float:
    """Bytes per second over the last window."""
    now = self.clock()
    with self._lock:
      while self._events and self._events[0][0] < now - self.window_s:
        self._events.popleft()
      total = sum(b for _, b in self._events)
      if self.interface:
        current = self._interface_bytes() or 0
        if self._last_if is not None:
          total += current - self._last_if[1]
        self._last_if = (now, current)
    return total / self.window_s


class UploadPolicy:
  """Decides whether the edge may upload now."""

  def allow(self) -> bool:
    raise NotImplementedError

  def describe(self) -> dict:
    return {"policy": type(self).__name__}


class AlwaysPolicy(UploadPolicy):
  def allow(self) -> bool:
    return True


@dataclasses.dataclass
class QuietNetworkPolicy(UploadPolicy):
  """Uploads while the measured WAN rate is below ``threshold_bytes_per_s``."""
  monitor: TrafficMonitor
  threshold_bytes_per_s: float

  def allow(self) -> bool:
    return self.monitor.rate() < self.threshold_bytes_per_s

  def describe(self) -> dict:
    return {"policy": "QuietNetworkPolicy",
            "threshold_bytes_per_s": self.threshold_bytes_per_s,
            "window_s": self.monitor.window_s,
            "current_rate_bytes_per_s": self.monitor.rate()}


@dataclasses.dataclass
class IdleWindowPolicy(UploadPolicy):
  """Uploads only between ``start`` and ``end`` local time ("HH:MM");
  a window may wrap past midnight."""
  start: str
  end: str
  clock: Callable[[], datetime.datetime] = datetime.datetime.now

  def __post_init__(self):
    for name in ("start", "end"):
      try:
        datetime.time.fromisoformat(getattr(self, name))
      except ValueError:
        raise ValueError(f"`{name}` must be HH:MM. Received: "
                         f"{name}={getattr(self, name)!r}") from None

  def allow(self) -> bool:
    now = self.clock().time()
    start = datetime.time.fromisoformat(self.start)
    end = datetime.time.fromisoformat(self.end)
    return start <= now < end if start <= end else (now >= start or now < end)

  def describe(self) -> dict:
    return {"policy": "IdleWindowPolicy", "start": self.start, "end": self.end}


@dataclasses.dataclass
class AllOf(UploadPolicy):
  policies: Sequence[UploadPolicy]

  def allow(self) -> bool:
    return all(p.allow() for p in self.policies)

  def describe(self) -> dict:
    return {"policy": "AllOf", "of": [p.describe() for p in self.policies]}
