"""The ImageNet path under `tfds.testing.mock_data`, the standard TFDS mock.

As the official BYOL test does: no prepared files and no download, TFDS's
builders make examples up. The run is planned with ImageNet's own split
sizes (the builder has none under the mock: sources.KNOWN_SIZES) and
protocol, and the streaming pre-training iterator yields batches.
"""

import numpy as np
import pytest

from byol_jax.config import configs
from byol_jax.config import plan
from byol_jax.data import pipeline
from byol_jax.data import sources

tfds = pytest.importorskip('tensorflow_datasets')


def test_imagenet_plans_and_streams_under_mock_data(tmp_path):
  config = configs.experiment_config('tiny')
  config.data.source = 'tfds:imagenet2012'
  config.data.data_dir = str(tmp_path / 'nothing_here')  # the mock's own
  config.data.image_size = 16
  config.training.global_batch_size = 8
  config.training.total_steps = 3
  with tfds.testing.mock_data(num_examples=6):
    run = plan.build(config, topology=plan.Topology(1, 2))
    d = run.pretrain
    assert isinstance(run.source, sources.TfdsSource)
    assert (d.num_train_examples, d.num_classes) == (1_281_167, 1000)
    assert run.data.path == 'streaming'
    assert run.source.num_examples('linear_train') == 1_271_167
    assert run.source.num_examples('test') == 50_000
    assert {
        s: run.source.resolve_split(s) for s in sources.LOGICAL_SPLITS
    } == sources.IMAGENET_SPLITS
    assert (run.probe.sweep_valid_split, run.probe.sweep_valid_examples) == (
        'linear_valid',
        10_000,
    )
    batches = pipeline.make_pretrain_iterator(
        run.source,
        split=run.data.splits['pretrain'],
        global_batch_size=8,
        image_size=16,
        seed=0,
        process_index=0,
        process_count=1,
        local_device_count=2,
    )
    for _ in range(2):
      batch = next(batches)
      assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
          'view1': ((2, 4, 16, 16, 3), np.float32),
          'view2': ((2, 4, 16, 16, 3), np.float32),
          'label': ((2, 4), np.int32),
      }
      for view in ('view1', 'view2'):
        assert 0 <= batch[view].min() and batch[view].max() <= 1
      assert ((0 <= batch['label']) & (batch['label'] < 1000)).all()
  assert not (tmp_path / 'nothing_here').exists()


def test_an_unprepared_dataset_outside_the_mock_is_still_refused(tmp_path):
  config = configs.experiment_config('tiny')
  config.data.source = 'tfds:imagenet2012'
  config.data.data_dir = str(tmp_path)
  with pytest.raises(
      plan.ConfigError,
      match=r'is not prepared in .*ImageNet ' r'needs a manual download',
  ):
    plan.build(config, topology=plan.Topology(1, 1))
