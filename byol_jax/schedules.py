"""Learning-rate and target-EMA schedules: pure functions of the step.

Both follow Grill et al. (2020) and the official BYOL code
(deepmind-research byol/utils/schedules.py), which Richemond et al. (2020)
reuse: the learning rate is scaled linearly with the batch size, warmed up
linearly and decayed with a cosine to 0; the target decay rate tau follows a
cosine from tau_base to 1 (both in BYOL paper section 3.3, "Implementation
details", paragraph "Optimization").

The step may be a Python int or a jnp integer array (traced inside jit or
pmap); the hyper-parameters must be Python numbers, validated eagerly.

The cosines are optax.cosine_decay_schedule's (equal to the official
formula to the bit). The linear warm-up is ours, step / warmup * peak as the
official code computes it: optax.linear_schedule rounds differently (one
float32 ulp apart on about a third of the warm-up steps), and
optax.warmup_cosine_decay_schedule refuses a warm-up as long as the run,
which plan.py produces when it shortens a warm-up to the run.
"""
import jax.numpy as jnp
import optax


def _check_total_steps(total_steps, fn):
  if not total_steps > 0:
    raise ValueError(f'{fn}: total_steps must be > 0, got {total_steps}; set '
                     'it to the number of training steps.')


def peak_learning_rate(base_learning_rate: float,
                       global_batch_size: int) -> float:
  """base * global_batch_size / 256: the linear scaling rule.

  BYOL paper section 3.3 ("LearningRate = 0.2 x BatchSize/256"); the
  official learning_schedule. Used for pre-training and the linear probe.

  Args:
    base_learning_rate: the rate for a batch of 256.
    global_batch_size: batch size summed over all devices and hosts.

  Returns:
    The peak learning rate (a Python float).
  """
  return float(base_learning_rate) * int(global_batch_size) / 256.


def learning_rate(step, *, base_learning_rate: float, global_batch_size: int,
                  total_steps: int, warmup_steps: int) -> jnp.ndarray:
  """Linear warmup then cosine decay of the batch-size-scaled learning rate.

  peak = base_learning_rate * global_batch_size / 256 (BYOL paper section
  3.3: "LearningRate = 0.2 x BatchSize/256"; official learning_schedule).
  The rate rises linearly from 0 at step 0 to `peak` at `warmup_steps`, then
  follows peak * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2,
  reaching 0 at `total_steps` and staying 0 afterwards. With warmup_steps == 0
  the cosine starts at step 0; with warmup_steps == total_steps there is no
  decay and the rate stays at the peak after the warmup.

  Args:
    step: current step (int or integer array, may be traced).
    base_learning_rate: learning rate for a batch of 256 (>= 0).
    global_batch_size: batch size summed over all devices and hosts (> 0).
    total_steps: number of training steps (> 0).
    warmup_steps: length of the linear warmup, 0 <= warmup_steps <=
      total_steps.

  Returns:
    float32 scalar (or array shaped like `step`) learning rate.

  Raises:
    ValueError: total_steps <= 0, warmup_steps outside [0, total_steps],
      global_batch_size <= 0 or base_learning_rate < 0.
  """
  _check_total_steps(total_steps, 'learning_rate')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'learning_rate: warmup_steps must be in [0, total_steps='
                     f'{total_steps}], got {warmup_steps}.')
  if not global_batch_size > 0:
    raise ValueError(f'learning_rate: global_batch_size must be > 0, got '
                     f'{global_batch_size}.')
  if not base_learning_rate >= 0:
    raise ValueError(f'learning_rate: base_learning_rate must be >= 0, got '
                     f'{base_learning_rate}.')
  peak = peak_learning_rate(base_learning_rate, global_batch_size)
  step = jnp.asarray(step).astype(jnp.float32)
  warm = step / max(warmup_steps, 1) * peak
  # max(., 1) only guards the degenerate warmup_steps == total_steps case, in
  # which the cosine branch sees step - warmup >= 0 and returns the peak.
  cosine = optax.cosine_decay_schedule(peak,
                                       max(total_steps - warmup_steps, 1))
  decayed = cosine(step - warmup_steps)
  return jnp.where(step < warmup_steps, warm, decayed)


def target_ema(step, *, base_ema: float, total_steps: int) -> jnp.ndarray:
  """Target decay rate tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.

  BYOL paper section 3.3 (official byol/utils/schedules.py: target_ema):
  tau starts at tau_base (0.996 in BYOL, 0.99 for Richemond et al.'s shorter
  runs) and rises to 1 at k = K = total_steps; it stays 1 for k > K.

  Args:
    step: current step k (int or integer array, may be traced).
    base_ema: tau_base in [0, 1].
    total_steps: K, the number of training steps (> 0).

  Returns:
    float32 scalar (or array shaped like `step`) tau_k.

  Raises:
    ValueError: total_steps <= 0 or base_ema outside [0, 1].
  """
  _check_total_steps(total_steps, 'target_ema')
  if not 0.0 <= base_ema <= 1.0:
    raise ValueError(f'target_ema: base_ema must be in [0, 1], got '
                     f'{base_ema} (BYOL uses 0.996).')
  step = jnp.asarray(step).astype(jnp.float32)
  return 1.0 - (1.0 - base_ema) * optax.cosine_decay_schedule(
      1.0, total_steps)(step)
