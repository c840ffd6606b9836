"""Learning-rate and target-EMA schedules: pure functions of the step.

Both as BYOL §3.3 ("Optimization") and the official byol/utils/schedules.py,
which Richemond et al. (2020) reuse. The step may be traced; the
hyper-parameters are Python numbers, validated eagerly.

The cosines are optax.cosine_decay_schedule's (equal to the official formula to
the bit). The linear warm-up is ours, step / warmup * peak as the official
code: optax.linear_schedule rounds differently (one float32 ulp on about a
third of the warm-up steps), and optax.warmup_cosine_decay_schedule refuses a
warm-up as long as the run, which plan.py makes when it shortens a warm-up.
"""

import jax.numpy as jnp
import optax


def _check_total_steps(total_steps, fn):
  if not total_steps > 0:
    raise ValueError(
        f'{fn}: total_steps must be > 0, got {total_steps}; set '
        'it to the number of training steps.'
    )


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

  From 0 at step 0 to peak = base * global_batch_size / 256 at `warmup_steps`,
  then peak * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2: 0 at
  `total_steps` and after. warmup_steps == total_steps: no decay.

  Args:
    step: int or integer array (may be traced).
    base_learning_rate: the rate for a batch of 256, >= 0.
    global_batch_size: summed over all devices and hosts, > 0.
    total_steps: > 0.
    warmup_steps: in [0, total_steps].

  Returns:
    float32, shaped like `step`.

  Raises:
    ValueError: an argument outside the ranges above.
  """
  _check_total_steps(total_steps, 'learning_rate')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(
        f'learning_rate: warmup_steps must be in [0, total_steps='
        f'{total_steps}], got {warmup_steps}.'
    )
  if not global_batch_size > 0:
    raise ValueError(
        f'learning_rate: global_batch_size must be > 0, got '
        f'{global_batch_size}.'
    )
  if not base_learning_rate >= 0:
    raise ValueError(
        f'learning_rate: base_learning_rate must be >= 0, got '
        f'{base_learning_rate}.'
    )
  peak = peak_learning_rate(base_learning_rate, global_batch_size)
  step = jnp.asarray(step).astype(jnp.float32)
  warm = step / max(warmup_steps, 1) * peak
  # max(., 1) only guards the degenerate warmup_steps == total_steps case, in
  # which the cosine branch sees step - warmup >= 0 and returns the peak.
  cosine = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  decayed = cosine(step - warmup_steps)
  return jnp.where(step < warmup_steps, warm, decayed)


def target_ema(step, *, base_ema: float, total_steps: int) -> jnp.ndarray:
  """Target decay tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, BYOL §3.3.

  From tau_base (BYOL 0.996; 0.99 for Richemond et al.'s shorter runs) at k = 0
  to 1 at k = K = total_steps, and 1 after. Returns float32 shaped like `step`;
  ValueError for total_steps <= 0 or base_ema outside [0, 1].
  """
  _check_total_steps(total_steps, 'target_ema')
  if not 0.0 <= base_ema <= 1.0:
    raise ValueError(
        f'target_ema: base_ema must be in [0, 1], got '
        f'{base_ema} (BYOL uses 0.996).'
    )
  step = jnp.asarray(step).astype(jnp.float32)
  return 1.0 - (1.0 - base_ema) * optax.cosine_decay_schedule(1.0, total_steps)(
      step
  )
