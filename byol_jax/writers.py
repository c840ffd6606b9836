"""Metric output of a run: WORKDIR/metrics.jsonl, TensorBoard and the console.

Named `writers` (not `logging`) so it never shadows the standard library.

  * metrics.jsonl: one JSON object per `write` call, `{"step": int, name:
    float, ...}`; `read_metrics` parses it back for report code. After a resume
    `truncate_after(step)` drops rows past the restored step, so the file has
    no duplicated steps.
  * TensorBoard: scalar events written with the `tensorboard` package's own
    event-file writer and protos; TensorFlow is not needed (tensorboard uses
    TF's file system layer, and so gs://, only when TF is importable). Without
    the `tensorboard` package one warning says so and the jsonl file is still
    written.
  * Console: one line per `console` call with step, loss, lr, tau, images/s and
    ETA measured from the wall time between calls.

Only the chief process (process 0) writes; on other hosts every method is a
no-op, so the train loop calls them unconditionally.
"""
import json
import time
from typing import Callable, Mapping, Optional

from absl import logging
from etils import epath
import numpy as np

from byol_jax import workdir as workdir_lib

METRICS_FILENAME = workdir_lib.METRICS


def _scalar(name: str, value) -> float:
  """`value` (Python, NumPy or JAX scalar, or any size-1 array) as a float.

  Raises:
    ValueError: `value` has more than one element.
  """
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(
        f'metric {name!r} has shape {arr.shape}; write scalars only (take the '
        'first replica of pmapped metrics, e.g. jax.tree.map(lambda x: x[0], '
        'metrics), or average them).')
  return float(arr.reshape(()))


def format_duration(seconds: float) -> str:
  """A duration for humans: 12 -> '12s', 754 -> '12m34s', 7380 -> '2h03m'.

  Args:
    seconds: the duration in seconds (rounded to whole seconds).

  Returns:
    '<s>s' under a minute, '<m>m<ss>s' under an hour, else '<h>h<mm>m'.
  """
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f'{h}h{m:02d}m'
  if m:
    return f'{m}m{s:02d}s'
  return f'{s}s'


class MetricWriter:
  """Writes scalar metrics of one run to jsonl, TensorBoard and the console."""

  def __init__(self,
               workdir,
               *,
               is_chief: bool = True,
               total_steps: Optional[int] = None,
               images_per_step: Optional[int] = None,
               filename: str = METRICS_FILENAME,
               tensorboard: bool = True,
               time_fn: Callable[[], float] = time.monotonic):
    """Creates a writer; nothing is written until `write` / `console`.

    Args:
      workdir: run directory (local path or gs:// URL); TensorBoard event files
        go directly into it.
      is_chief: True on process 0 only; other processes write nothing.
      total_steps: steps of the whole run, for the ETA (None: no ETA).
      images_per_step: global batch size, for images/s (None: not shown).
      filename: name of the jsonl file inside workdir.
      tensorboard: False to write no TensorBoard events.
      time_fn: clock for images/s and ETA (injectable for tests).
    """
    self._workdir = epath.Path(workdir)
    self._path = self._workdir / filename
    self._is_chief = is_chief
    self._total_steps = total_steps
    self._images_per_step = images_per_step
    self._use_tb = tensorboard
    self._time_fn = time_fn
    self._tb_writer = None
    self._last = None  # (time, step) of the previous console() call.
    if is_chief:
      self._workdir.mkdir(parents=True, exist_ok=True)

  @property
  def path(self) -> epath.Path:
    """The metrics.jsonl file."""
    return self._path

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    """Appends `{"step": step, **metrics}` to the jsonl and TensorBoard.

    Args:
      step: training step (int).
      metrics: name -> scalar (float, int, NumPy/JAX 0-d or size-1 array).
        Non-finite values are written as NaN/Infinity, which Python's json
        (and `read_metrics`) parses back.

    Raises:
      ValueError: a metric is not a scalar, or is named 'step'.
    """
    if not self._is_chief:
      return
    if 'step' in metrics:
      raise ValueError("metrics must not contain 'step'; pass it as `step`.")
    row = {'step': int(step)}
    row.update({k: _scalar(k, v) for k, v in metrics.items()})
    line = json.dumps(row) + '\n'
    if '://' in str(self._path):
      # Object stores (gs://) cannot append: rewrite the (small) file.
      old = self._path.read_text() if self._path.exists() else ''
      self._path.write_text(old + line)
    else:
      with self._path.open('a') as f:
        f.write(line)
    tb = self._tensorboard()
    if tb is not None:
      # pylint: disable-next=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2, summary_pb2
      values = [summary_pb2.Summary.Value(tag=k, simple_value=v)
                for k, v in row.items() if k != 'step']
      tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                   summary=summary_pb2.Summary(value=values)))

  def _tensorboard(self):
    """The TensorBoard event-file writer, created on first use, or None.

    None when TensorBoard is off, or the `tensorboard` package is missing
    (logged once).
    """
    if not self._use_tb:
      return None
    if self._tb_writer is None:
      try:
        # pylint: disable-next=g-import-not-at-top
        from tensorboard.summary.writer import event_file_writer
      except ImportError as e:
        logging.warning(
            'TensorBoard logging disabled: the tensorboard package is not '
            'importable (%s). Metrics are still written to %s.', e, self._path)
        self._use_tb = False
        return None
      # ".v2" as tf.summary names its files: events.out.tfevents.<time>.
      # <host>.<pid>.<n>.v2, so tools that parse the pid keep working.
      self._tb_writer = event_file_writer.EventFileWriter(
          str(self._workdir), filename_suffix=".v2")
    return self._tb_writer

  def console(self, step: int, metrics: Mapping[str, object]) -> Optional[str]:
    """Logs one progress line and returns it (None on non-chief processes).

    Example: `step 200/1000 (20.0%) | loss 0.4321 | lr 1.20e-01 |
    tau 0.99612 | 512.0 img/s | ETA 2m40s`. images/s and ETA come from the
    wall time and steps since the previous call (shown as '--' on the first).

    Args:
      step: training step.
      metrics: name -> scalar; 'loss', 'lr' and 'tau' are shown when present,
        other metrics are not.

    Returns:
      The line that was logged; None on non-chief processes.

    Raises:
      ValueError: 'loss', 'lr' or 'tau' is not a scalar.
    """
    if not self._is_chief:
      return None
    now = self._time_fn()
    step = int(step)
    parts = [f'step {step}' if self._total_steps is None else
             f'step {step}/{self._total_steps} '
             f'({100.0 * step / max(self._total_steps, 1):.1f}%)']
    for name, fmt in (('loss', '.4f'), ('lr', '.2e'), ('tau', '.5f')):
      if name in metrics:
        parts.append(f'{name} {_scalar(name, metrics[name]):{fmt}}')
    secs_per_step = None
    if self._last is not None:
      dt, dstep = now - self._last[0], step - self._last[1]
      if dt > 0 and dstep > 0:
        secs_per_step = dt / dstep
    if self._images_per_step is not None:
      parts.append('-- img/s' if secs_per_step is None else
                   f'{self._images_per_step / secs_per_step:.1f} img/s')
    if self._total_steps is not None:
      parts.append('ETA --' if secs_per_step is None else 'ETA ' +
                   format_duration(max(self._total_steps - step, 0) *
                                    secs_per_step))
    self._last = (now, step)
    line = ' | '.join(parts)
    logging.info(line)
    return line

  def truncate_after(self, step: int) -> int:
    """Drops jsonl rows with row step > `step` (call after a resume).

    Also drops a partial last line left by a process killed mid-write. The
    file is rewritten to a temporary name and renamed over the original.

    Args:
      step: the restored checkpoint's step.

    Returns:
      the number of rows dropped (0 on non-chief processes).
    """
    if not self._is_chief or not self._path.exists():
      return 0
    rows = read_metrics(self._path.parent, filename=self._path.name)
    kept = [r for r in rows if r['step'] <= step]
    text = ''.join(json.dumps(r) + '\n' for r in kept)
    if text == self._path.read_text():
      return 0  # nothing to drop: leave the file (and its mtime) alone.
    tmp = self._path.parent / (self._path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(self._path)
    dropped = len(rows) - len(kept)
    if dropped:
      logging.info('Dropped %d rows after step %d from %s.', dropped, step,
                   self._path)
    return dropped

  def flush(self) -> None:
    """Flushes TensorBoard (the jsonl is flushed on every write)."""
    if self._tb_writer is not None:
      self._tb_writer.flush()

  def close(self) -> None:
    """Flushes and closes TensorBoard; later writes reopen it."""
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None

  def __enter__(self):
    """Returns the writer; leaving the `with` block closes it."""
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def read_metrics(workdir, filename: str = METRICS_FILENAME) -> list[dict]:
  """Parses WORKDIR/metrics.jsonl into a list of dicts (file order).

  Args:
    workdir: run directory.
    filename: jsonl file name inside it.

  Returns:
    One dict per row ({'step': int, name: float}); [] when the file is absent.
    A truncated last line (a process killed mid-write) is skipped with a
    warning.

  Raises:
    ValueError: a line other than the last is not valid JSON (the message
      names file and line).
  """
  path = epath.Path(workdir) / filename
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        logging.warning('Skipping a truncated last line of %s.', path)
        continue
      raise ValueError(f'{path}:{i + 1} is not valid JSON ({e}).') from e
  return rows

