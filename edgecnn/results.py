"""Long-format result CSVs that survive interruption, and run metadata.

Every measured value is one row (STYLE habit 4). A run's rows are appended
in one write on an O_APPEND descriptor and fsynced, so a killed sweep loses at
most the run in progress; ``ResultLog.done`` lets a rerun skip finished runs.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import io
import json
import os
import pathlib
import socket
import subprocess
import time
import uuid
from typing import Any, Iterable, Mapping

import pandas as pd

COLUMNS = ("experiment", "dataset", "preset", "model", "num_shared",
           "pretrained", "labels", "num_images", "seed", "condition", "metric",
           "value", "unit", "device", "threads", "commit", "timestamp")
# `condition` holds what else identifies a measurement, as k=v;k=v (for
# example "link=lte;size_kb=512;emulation=proxy"); empty for most rows.
# Columns that are always text. A reader that lets pandas guess types turns
# an all-digit short commit such as "0123456" into the integer 123456.
TEXT_COLUMNS = ("experiment", "dataset", "preset", "model", "labels",
                "condition", "metric", "unit", "device", "commit",
                "timestamp")
KEY_COLUMNS = ("experiment", "dataset", "preset", "model", "num_shared",
               "pretrained", "labels", "num_images", "seed", "condition")


def git_commit(path: str | os.PathLike = ".") -> str:
  """Short commit of the checkout holding ``path`` ('-dirty' if modified),
  or 'unknown' outside git."""
  try:
    cwd = pathlib.Path(path).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd,
                            capture_output=True, text=True, check=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgecnn",
                            "experiments"], cwd=cwd, capture_output=True,
                           text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def key_text(value: Any) -> str:
  """A key column's value as the CSV holds it (None and NaN: empty)."""
  if value is None or (isinstance(value, float) and value != value):
    return ""
  return str(value)


class ResultLog:
  """Appends result rows to a long-format CSV and answers what is done.

  Args:
    path: the CSV file (created with a header on first write).
    common: values shared by every row (device, threads, commit, ...).
  """

  def __init__(self, path: str | os.PathLike, common: Mapping[str, Any]):
    self.path = pathlib.Path(path)
    unknown = set(common) - set(COLUMNS)
    if unknown:
      raise ValueError(f"Unknown result columns {sorted(unknown)}; the schema "
                       f"is {list(COLUMNS)}")
    self.common = dict(common)
    self._done: set[tuple[str, ...]] | None = None
    self.claims_dir = self.path.with_name(self.path.name + ".claims")
    self._token = uuid.uuid4().hex  # tells this log's claims from others'

  def read(self) -> pd.DataFrame:
    """All complete rows so far (a row cut short by a kill is dropped)."""
    if not self.path.exists() or self.path.stat().st_size == 0:
      return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(self.path, dtype=str, keep_default_na=False,
                        on_bad_lines="skip")
    if tuple(frame.columns) != COLUMNS:
      raise ValueError(f"{self.path} has columns {list(frame.columns)}, not "
                       f"this version's schema {list(COLUMNS)}; migrate it "
                       "(edgecnn.results.migrate) or write to another file.")
    return frame[frame["timestamp"] != ""]

  def _keys(self) -> set[tuple[str, ...]]:
    if self._done is None:
      frame = self.read()
      self._done = {tuple(row) for row in
                    frame[list(KEY_COLUMNS)].itertuples(index=False)}
    return self._done

  def done(self, key: Mapping[str, Any]) -> bool:
    """Whether rows with these key columns are already in the file."""
    return self._key_tuple(key) in self._keys()

  def append(self, key: Mapping[str, Any],
             metrics: Iterable[tuple[str, Any, str]]) -> pd.DataFrame:
    """Appends one row per (metric, value, unit) for a finished run."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    rows = [{**self.common, **key, "metric": m, "value": v, "unit": u,
             "timestamp": stamp} for m, v, u in metrics]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    self.path.parent.mkdir(parents=True, exist_ok=True)
    new = not self.path.exists() or self.path.stat().st_size == 0
    if not new:
      self.read()  # refuses a file of another schema before appending
    buf = io.StringIO()
    frame.to_csv(buf, header=new, index=False)
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, buf.getvalue().encode())
      os.fsync(fd)
    finally:
      os.close(fd)
    self._keys().add(self._key_tuple(key))
    return frame

  def _key_tuple(self, key: Mapping[str, Any]) -> tuple[str, ...]:
    full = {**self.common, **key}
    return tuple(key_text(full.get(c)) for c in KEY_COLUMNS)

  def claim_path(self, key: Mapping[str, Any]) -> pathlib.Path:
    """The claim file of a run: <csv>.claims/<hash of its key columns>."""
    digest = hashlib.sha1("\x1f".join(self._key_tuple(key)).encode())
    return self.claims_dir / f"{digest.hexdigest()[:16]}.json"

  def claim(self, key: Mapping[str, Any]) -> bool:
    """Takes a run for this process, so that sweeps sharing the CSV split it.

    Creates the run's claim file (exclusively) holding this host and pid,
    then rereads the CSV. Returns False, leaving nothing behind, when the
    run is already in the CSV (another sweep may have finished it since this
    one last read) or another live process holds its claim. A claim left by
    a process of this host that is gone (killed) is taken over; one from
    another host is trusted until its file is deleted, since its pid cannot
    be checked from here. Release it with ``release`` when the rows are
    written or the run failed.
    """
    path = self.claim_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "token": self._token,
        "key": dict(zip(KEY_COLUMNS, self._key_tuple(key))),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")}, indent=1)
    fd = _create_claim(path)
    if fd is None:
      return False
    try:
      os.write(fd, record.encode())
    finally:
      os.close(fd)
    self._done = None  # reread: another sweep may have finished this run
    if self.done(key):
      path.unlink(missing_ok=True)
      return False
    return True

  def release(self, key: Mapping[str, Any]) -> None:
    """Removes this log's claim on a run (no-op if it holds none)."""
    path = self.claim_path(key)
    holder = claim_holder(path)
    if holder is not None and holder.get("token") == self._token:
      path.unlink(missing_ok=True)

  def claimed_by(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The live holder of a run's claim ({host, pid, token, since, key}),
    or None."""
    return live_holder(self.claim_path(key))


# A claim file that cannot be read is one being written (live) or one whose
# writer was killed between creating and writing it (stale after this long).
UNREADABLE_CLAIM_STALE_S = 60.0


_CLAIM_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _create_claim(path: pathlib.Path) -> int | None:
  """Creates a claim file exclusively, taking over a stale one; returns its
  descriptor, or None when a live process holds the claim.

  Takeovers (judge the holder, delete its file, create ours) run under an
  flock of the claims directory, so two sweeps of this host that find the same
  dead claim at once cannot both delete and recreate it (the second would
  delete the first's fresh claim). A sweep that needs no takeover creates
  the file without the lock; the exclusive create keeps that safe.
  """
  try:
    return os.open(path, _CLAIM_FLAGS, 0o644)
  except FileExistsError:
    pass
  lock = os.open(path.parent, os.O_RDONLY)
  try:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if live_holder(path) is not None:
      return None
    path.unlink(missing_ok=True)  # its process is gone: take it over
    try:
      return os.open(path, _CLAIM_FLAGS, 0o644)
    except FileExistsError:
      return None  # created meanwhile by a sweep that needed no takeover
  finally:
    os.close(lock)  # releases the lock


def claim_holder(path: str | os.PathLike) -> dict[str, Any] | None:
  """The record of a claim file; {} for one being written or unreadable,
  None when there is no file."""
  try:
    text = pathlib.Path(path).read_text()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def live_holder(path: str | os.PathLike) -> dict[str, Any] | None:
  """The record of a claim whose process may still run, or None when there
  is no claim, its process is gone, or it is unreadable and older than
  UNREADABLE_CLAIM_STALE_S."""
  holder = claim_holder(path)
  if holder is None:
    return None
  if not holder:
    try:
      age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
      return None
    return holder if age < UNREADABLE_CLAIM_STALE_S else None
  return holder if holder_alive(holder) else None


def holder_alive(holder: Mapping[str, Any]) -> bool:
  """Whether a claim's process may still run: False only for a pid of this
  host that no longer exists."""
  if holder.get("host") != socket.gethostname():
    return True
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def flags_path(csv_path: str | os.PathLike, name: str) -> pathlib.Path:
  """Where the latest flags of a CSV's runs named ``name`` are kept:
  ``<stem>.<name>.flags.json`` beside it (write_metadata)."""
  csv_path = pathlib.Path(csv_path)
  return csv_path.with_name(f"{csv_path.stem}.{name}.flags.json")


def invocations_path(csv_path: str | os.PathLike) -> pathlib.Path:
  """Where a CSV's history of commands is kept: ``<stem>.invocations.jsonl``
  beside it (append_invocation, read_invocations)."""
  csv_path = pathlib.Path(csv_path)
  return csv_path.with_name(f"{csv_path.stem}.invocations.jsonl")


def write_metadata(path: str | os.PathLike, values: Mapping[str, Any]) -> None:
  """Writes the flags (or config) of a run as JSON next to its results."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(dict(values), indent=2, sort_keys=True,
                            default=str) + "\n")
  os.replace(tmp, path)


def append_invocation(path: str | os.PathLike,
                      record: Mapping[str, Any]) -> None:
  """Appends one run's record as a JSON line (a history, never rewritten).

  One write of one line in append mode, so copies of a sweep started side by
  side do not interleave their records.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  line = json.dumps(dict(record), sort_keys=True, default=str) + "\n"
  fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
      line = "\n" + line  # a record cut short by a kill stays on its own line
    os.write(fd, line.encode())
  finally:
    os.close(fd)


def read_invocations(path: str | os.PathLike) -> list[dict]:
  """The records append_invocation wrote (a line cut short is skipped)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def migrate(path: str | os.PathLike) -> bool:
  """Rewrites a CSV of an older schema (missing columns become empty).

  Returns:
    Whether the file was rewritten.
  """
  path = pathlib.Path(path)
  frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  if tuple(frame.columns) == COLUMNS:
    return False
  unknown = set(frame.columns) - set(COLUMNS)
  if unknown:
    raise ValueError(f"{path} has columns {sorted(unknown)} this schema lacks.")
  for col in COLUMNS:
    if col not in frame:
      frame[col] = ""
  tmp = path.with_suffix(path.suffix + ".tmp")
  frame[list(COLUMNS)].to_csv(tmp, index=False)
  os.replace(tmp, path)
  return True
