r"""Why accumulation is slow on XLA:CPU: convolution gradients inside a loop.

    python -m benchmarks.scan_conv

A 4-layer 3x3 convolution stack (64 x 32 x 32 x 32, float32): the gradient of
the whole batch, then the mean of 2 micro-batches' gradients in a lax.scan (as
experiment.make_update accumulates) and in the same scan unrolled. Prints the
median step time and XLA's temporary memory of each (jax-ml/jax#12868).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

MICRO = 2


def _loss(ws, x):
  for w in ws:
    x = jax.nn.relu(
        jax.lax.conv_general_dilated(
            x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )
    )
  return jnp.mean(x**2)


def _accumulated(unroll):
  def grads(ws, x):
    def body(acc, xi):
      return jax.tree.map(jnp.add, acc, jax.grad(_loss)(ws, xi)), None

    xs = x.reshape((MICRO, -1) + x.shape[1:])
    zeros = jax.tree.map(jnp.zeros_like, ws)
    acc, _ = jax.lax.scan(body, zeros, xs, unroll=unroll)
    return jax.tree.map(lambda g: g / MICRO, acc)

  return grads


def main():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = jax.random.normal(keys[0], (64, 32, 32, 32))
  ws = [0.1 * jax.random.normal(k, (3, 3, 32, 32)) for k in keys[1:]]
  for name, fn in (
      ('whole batch', jax.grad(_loss)),
      (f'{MICRO} micro-batches, lax.scan', _accumulated(False)),
      (f'{MICRO} micro-batches, unrolled', _accumulated(True)),
  ):
    compiled = jax.jit(fn).lower(ws, x).compile()
    jax.block_until_ready(compiled(ws, x))
    times = []
    for _ in range(5):
      start = time.perf_counter()
      jax.block_until_ready(compiled(ws, x))
      times.append(time.perf_counter() - start)
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    print(f'{name:32s} {np.median(times):8.3f} s  temp {temp:6.1f} MiB')


if __name__ == '__main__':
  main()
