r"""Linear evaluation of a pre-trained encoder (the paper's protocol).

Frozen encoder; linear classifier trained with SGD + Nesterov momentum 0.9,
no weight decay, cosine lr, 80 epochs, batch 1024, random-resized crop + flip;
centre-crop test (BYOL Appendix C.1). Results: WORKDIR/eval_results.json.
The model comes from the pre-training run's config.json, and so does the
data, except what you name explicitly: `dataset=` or a --config.data.<field>
override (byol_jax/config/plan.py, eval_inputs). Setting
--config.eval.pretrain_workdir
on any experiment config evaluates the same way; its presets' data does not
count as named.

  python -m byol_jax.main \
      --config=experiments/linear_eval.py:pretrain=/path/to/pretrain_workdir \
      --workdir=/path/to/eval_workdir
  python -m byol_jax.main --config=experiments/linear_eval.py \
      --config.eval.pretrain_workdir=/path/to/pretrain_workdir \
      --workdir=/path/to/eval_workdir
"""

from byol_jax.config import configs


def get_config(arg=None):
  # The run fixes model, training and scale: only its data may be renamed.
  options = configs.parse_options(arg, ('dataset', 'pretrain'))
  config = configs.experiment_config(arg, options=options)
  config.mode = 'linear_eval'
  config.eval.pretrain_workdir = options.get('pretrain', '')
  return config
