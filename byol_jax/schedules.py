"""Learning-rate and target-EMA schedules (BYOL §3.3, official schedules.py).

Cosines: optax.cosine_decay_schedule's (the official formula to the bit). The
linear warm-up is ours, step / warmup * peak as the official code:
optax.linear_schedule rounds differently (one float32 ulp on about a third of
the steps) and warmup_cosine_decay_schedule refuses a warm-up as long as the
run, which plan.py makes when it shortens one.
"""

import jax.numpy as jnp
import optax


def _refuse(fn, field, value, allowed):
  raise ValueError(f'{fn}: {field} must be {allowed}, got {value}.')


def peak_learning_rate(
    base_learning_rate: float, global_batch_size: int
) -> float:
  """base * global_batch_size / 256 (BYOL §3.3: "0.2 x BatchSize/256")."""
  return float(base_learning_rate) * int(global_batch_size) / 256.0


def learning_rate(
    step,
    *,
    base_learning_rate: float,
    global_batch_size: int,
    total_steps: int,
    warmup_steps: int,
) -> jnp.ndarray:
  """Linear warm-up then cosine decay to 0 of the batch-scaled rate (BYOL §3.3).

  0 at step 0, peak = base * global_batch_size / 256 at `warmup_steps`, then
  peak * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2: 0 from
  `total_steps` on.

  step: int or integer array (may be traced); base_learning_rate >= 0, the
  rate for a batch of 256; global_batch_size > 0, over all devices and hosts;
  total_steps > 0; warmup_steps in [0, total_steps] (== total_steps: no
  decay). Returns float32 shaped like `step`; ValueError out of range.
  """
  fn = 'learning_rate'
  if not total_steps > 0:
    _refuse(fn, 'total_steps', total_steps, '> 0')
  if not 0 <= warmup_steps <= total_steps:
    _refuse(fn, 'warmup_steps', warmup_steps, f'in [0, {total_steps=}]')
  if not global_batch_size > 0:
    _refuse(fn, 'global_batch_size', global_batch_size, '> 0')
  if not base_learning_rate >= 0:
    _refuse(fn, 'base_learning_rate', base_learning_rate, '>= 0')
  peak = peak_learning_rate(base_learning_rate, global_batch_size)
  step = jnp.asarray(step).astype(jnp.float32)
  warm = step / max(warmup_steps, 1) * peak
  # max(., 1) only guards warmup_steps == total_steps, where the cosine
  # branch sees step - warmup >= 0 and returns the peak.
  cosine = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  return jnp.where(step < warmup_steps, warm, cosine(step - warmup_steps))


def target_ema(step, *, base_ema: float, total_steps: int) -> jnp.ndarray:
  """Target decay tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, BYOL §3.3.

  From tau_base (BYOL 0.996; 0.99 for Richemond et al.'s shorter runs) at k = 0
  to 1 at k = K = total_steps, and 1 after. Returns float32 shaped like `step`;
  ValueError for total_steps <= 0 or base_ema outside [0, 1].
  """
  if not total_steps > 0:
    _refuse('target_ema', 'total_steps', total_steps, '> 0')
  if not 0 <= base_ema <= 1:
    _refuse('target_ema', 'base_ema', base_ema, 'in [0, 1] (BYOL: 0.996)')
  step = jnp.asarray(step).astype(jnp.float32)
  decay = optax.cosine_decay_schedule(1.0, total_steps)
  return 1.0 - (1.0 - base_ema) * decay(step)
