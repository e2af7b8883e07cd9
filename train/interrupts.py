"""SIGINT (Ctrl-C) and SIGTERM (preemption, a scheduler) end a run cleanly.

The first signal is noted; the loop then saves a checkpoint of the step it
has finished and raises ``Interrupted`` (``python -m train`` exits with
128 + the signal's number). A second signal exits at once, as without this.
"""
import contextlib
import signal
import threading


class Interrupted(Exception):
  """The run was stopped by a signal after saving its checkpoint."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class Signals:
  """``received``: the first SIGINT / SIGTERM since ``installed()``."""

  def __init__(self):
    self.received: int | None = None

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # The second one: the default action.
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)
      return
    self.received = signum

  @contextlib.contextmanager
  def installed(self):
    """Handles SIGINT and SIGTERM inside the block (main thread only: Python
    delivers signals there; elsewhere the defaults stay)."""
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.signal(s, self._handle)
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
