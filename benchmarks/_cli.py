"""The benchmarks' command lines: absl.flags + absl.app, as byol_jax/'s.

Each benchmark has `define_flags(flag_values)`, which defines its flags on
the FlagValues it is given (never at import, so one benchmark importing
another defines nothing twice), and `run(args, argv)`, its body. Two ways
in:

  * the command (`python -m benchmarks.<name> ...`): `main_run` defines the
    flags on absl's global FLAGS and runs the body under `app.run`
    (so --help / --helpfull print the module docstring and the flags);
  * Python (`<name>.main([...])`, tests, device_suite): `parse` defines
    them on a fresh `flags.FlagValues()` per call, so calls never see each
    other's values.

Either way a bad command line (an unknown flag, a value that does not
parse, a failed check) prints one line, `Usage error: ...`, on stderr and
exits with code 2 (as argparse did, and as byol_jax/main.py does).
"""

import sys

from absl import app
from absl import flags


class CsvParser(flags.ListParser):
  """A comma-separated list, each item converted by `kind`; empty items dropped.

  'a,,b' is ['a', 'b'] (as the benchmarks' argparse lists were); a bad item
  is a flag error naming the flag (absl wraps the ValueError).
  """

  def __init__(self, kind=str):
    super().__init__()
    self._kind = kind

  def parse(self, argument):
    items = argument if isinstance(argument, list) else super().parse(argument)
    return [self._kind(x) for x in items if x != '']


def define_csv(name, default, help_text, flag_values, kind=str):
  """DEFINE_list with items of `kind` (int, float, str) and no empties."""
  # Declared by the caller's module (absl's --help lists the main
  # module's flags), named as absl names it.
  module = sys._getframe(1).f_globals['__name__']  # pylint: disable=protected-access
  flags.DEFINE(
      CsvParser(kind),
      name,
      default,
      help_text,
      flag_values=flag_values,
      serializer=flags.CsvListSerializer(','),
      module_name=sys.argv[0] if module == '__main__' else module,
  )


def usage_error(message) -> None:
  """One line on stderr, exit code 2: the user's to fix, no stack trace."""
  print(f'Usage error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(2)


def _parse_into(flag_values, argv_with_program, check) -> None:
  try:
    rest = flag_values(argv_with_program)
  except flags.Error as e:
    usage_error(e)
  if len(rest) > 1:
    usage_error(
        f'unexpected argument(s) {" ".join(rest[1:])!r} (every '
        'option is a --flag=value; booleans are --flag / --noflag)'
    )
  if check is not None:
    try:
      check(flag_values)
    except ValueError as e:
      usage_error(e)


def parse(define, argv, check=None, program='benchmark') -> flags.FlagValues:
  """A fresh FlagValues with `define`'s flags, parsed from `argv`.

  Args:
    define: the module's define_flags(flag_values).
    argv: arguments without the program name.
    check: optional check(flag_values) raising ValueError (a usage error)
      for combinations the flags' own parsers cannot see.
    program: argv[0] as absl sees it.

  Returns:
    The parsed FlagValues (attribute access: `args.steps`).
  """
  flag_values = flags.FlagValues()
  define(flag_values)
  _parse_into(flag_values, [program] + list(argv), check)
  return flag_values


def main_run(define, run, check=None) -> None:
  """The command: `app.run` of run(FLAGS, argv[1:]) with define's flags.

  run's return value (a result dict) is dropped: app.run would exit with
  it.
  """
  define(flags.FLAGS)

  def flags_parser(argv):
    _parse_into(flags.FLAGS, argv, check)
    if flags.FLAGS['verbosity'].using_default_value:
      # app.run would turn INFO logging on (jax's backend probing and the
      # like); the benchmarks print what they measure and, as before,
      # log warnings and errors only. --verbosity=0 brings INFO back.
      flags.FLAGS.verbosity = -1
    return argv

  def main(argv):
    run(flags.FLAGS, argv[1:])

  app.run(main, flags_parser=flags_parser)
