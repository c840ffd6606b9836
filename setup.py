"""Installs byol_jax: `pip install -e .`, or `pip install -e '.[test]'`."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / 'requirements.txt').read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith('#')]


setuptools.setup(
    name='byol_jax',
    version='0.1.0',
    description=(
        'BYOL works even without batch statistics (Richemond et al., '
        '2020) in JAX/Haiku.'
    ),
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['byol_jax', 'byol_jax.*']),
    python_requires='>=3.11',
    install_requires=_requirements(),
    extras_require={'test': ['pytest>=7', 'pytest-xdist>=3', 'ruff', 'pyink']},
)
