"""metrics.jsonl, TensorBoard (if importable), the console line; chief only."""

import json
import time
from typing import Mapping

from absl import logging
import numpy as np

from byol_jax.training import workdir as workdir_lib


def _scalar(name: str, value) -> float:
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(
        f'metric {name!r} has shape {arr.shape}; write scalars only (take the '
        'first replica of pmapped metrics, e.g. jax.tree.map(lambda x: x[0], '
        'metrics), or average them).'
    )
  return float(arr.reshape(()))


def format_duration(seconds: float) -> str:
  """A duration for humans: 12 -> '12s', 754 -> '12m34s', 7380 -> '2h03m'."""
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class MetricWriter:
  """Scalar metrics to jsonl, TensorBoard and the console (img/s, ETA)."""

  def __init__(
      self,
      workdir,
      *,
      is_chief: bool = True,
      total_steps: int,
      images_per_step: int,
  ):
    self._path = workdir_lib.metrics_path(workdir)
    self._is_chief, self._use_tb = is_chief, True
    self._total_steps, self._images_per_step = total_steps, images_per_step
    self._tb_writer = self._last = None  # _last: (time, step) of console().
    if is_chief:
      self._path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    """Appends {"step": step, **scalar metrics} (NaN as json's NaN)."""
    if not self._is_chief:
      return
    if 'step' in metrics:
      raise ValueError("metrics must not contain 'step'; pass it as `step`.")
    values = {k: _scalar(k, v) for k, v in metrics.items()}
    line = json.dumps({'step': int(step), **values}) + '\n'
    if '://' in str(self._path):
      # Object stores (gs://) cannot append: rewrite the (small) file.
      old = self._path.read_text() if self._path.exists() else ''
      self._path.write_text(old + line)
    else:
      with self._path.open('a') as f:
        f.write(line)
    if not self._use_tb:
      return
    try:
      # pylint: disable=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2
      from tensorboard.compat.proto import summary_pb2
      from tensorboard.summary.writer import event_file_writer
    except ImportError as e:
      logging.warning(
          'TensorBoard logging disabled: the tensorboard package is not '
          'importable (%s). Metrics are still written to %s.',
          e,
          self._path,
      )
      self._use_tb = False
      return
    if self._tb_writer is None:
      # ".v2" as tf.summary's file names, for tools that parse them.
      self._tb_writer = event_file_writer.EventFileWriter(
          str(self._path.parent), filename_suffix='.v2'
      )
    summary = summary_pb2.Summary()
    for k, v in values.items():
      summary.value.add(tag=k, simple_value=v)
    self._tb_writer.add_event(
        event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
    )

  def console(self, step: int, metrics: Mapping[str, object]) -> None:
    """Logs the progress line (rates since the last call)."""
    if not self._is_chief:
      return
    now, step, total = time.monotonic(), int(step), self._total_steps
    parts = [f'step {step}/{total} ({100.0 * step / max(total, 1):.1f}%)']
    for name, fmt in (('loss', '.4f'), ('lr', '.2e'), ('tau', '.5f')):
      if name in metrics:
        parts.append(f'{name} {_scalar(name, metrics[name]):{fmt}}')
    sps = None
    if self._last is not None and now > self._last[0] and step > self._last[1]:
      sps = (now - self._last[0]) / (step - self._last[1])
    rate = f'{self._images_per_step / sps:.1f}' if sps else '--'
    eta = format_duration(max(total - step, 0) * sps) if sps else '--'
    parts += [f'{rate} img/s', f'ETA {eta}']
    self._last = (now, step)
    logging.info(' | '.join(parts))

  def truncate_after(self, step: int) -> None:
    """Drops rows past `step` and a partial last line."""
    if not self._is_chief or not self._path.exists():
      return
    rows = read_metrics(self._path.parent)
    kept = [r for r in rows if r['step'] <= step]
    text = ''.join(json.dumps(r) + '\n' for r in kept)
    if text != self._path.read_text():  # else leave the file (and its mtime)
      tmp = self._path.parent / (self._path.name + '.tmp')
      tmp.write_text(text)
      tmp.replace(self._path)
    if dropped := len(rows) - len(kept):
      logging.info(
          'Dropped %d rows after step %d from %s.', dropped, step, self._path
      )

  def close(self) -> None:
    """Flushes and closes TensorBoard; later writes reopen it."""
    if self._tb_writer is not None:
      self._tb_writer.close()
      self._tb_writer = None


def read_metrics(workdir) -> list[dict]:
  """WORKDIR/metrics.jsonl's rows; a truncated last line skipped, warned."""
  path = workdir_lib.metrics_path(workdir)
  lines = path.read_text().splitlines() if path.exists() else []
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        logging.warning('Skipping a truncated last line of %s.', path)
      else:
        raise ValueError(f'{path}:{i + 1} is not valid JSON ({e}).') from e
  return rows
