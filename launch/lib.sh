#!/usr/bin/env bash
# Helpers shared by the launch scripts (sourced, not run). The sourcing script
# sets `script` (its name, for messages), `repo` (the checkout's root, for
# pin and install_venv) and, for run(), `dry_run`.
#
# Everything here and in the scripts runs on bash 3.2 (macOS's /bin/bash)
# and later: under `set -u`, bash before 4.4 stops on "${array[@]}" of an
# empty array and bash before 4.1 on "$@" without arguments, so arrays that
# may be empty expand as ${array[@]+"${array[@]}"} and arguments as
# ${1+"$@"}; no bash 4 features (associative arrays, mapfile, ${x,,}, wait -n,
# [[ -v ]]). tests/test_launch.py checks this statically and runs the dry
# runs under every old bash it finds.

# A usage error: one line naming the problem and the fix, exit status 2.
die() {
  echo "${script:-launch}: ${*:-}" >&2
  exit 2
}

# --help: the script's comment block from line FIRST on, without the '# '.
print_usage() {
  awk -v first="$1" 'NR >= first && /^#/ { sub(/^# ?/, ""); print; next }
    NR >= first { exit }' "$0" >&2
}

# The arguments as one shell-quoted line (single quotes where needed).
quote() {
  local out='' arg
  # The replacement comes from a variable: bash 4.2 and older treat quotes in
  # a literal replacement of "${x//pat/rep}" differently from bash 4.3+.
  local escaped="'\\''"
  for arg; do
    if [[ $arg =~ ^[-A-Za-z0-9_./:=,@+%]+$ ]]; then
      out="$out $arg"
    else
      out="$out '${arg//\'/$escaped}'"
    fi
  done
  printf '%s' "${out# }"
}

# Prints a command (runnable as printed), then runs it unless --dry-run.
run() {
  printf '+ %s\n' "$(quote ${1+"$@"})"
  if ((!${dry_run:-0})); then
    ${1+"$@"}
  fi
}

# The version constraints.txt pins for a package (empty when not pinned).
pin() {
  sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "${repo:?}/constraints.txt"
}

# Stops unless PYTHON is an interpreter of Python 3.11 or later (the tested
# stack's; jax 0.7 and later need it).
check_python() {
  local python=$1 version
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2> /dev/null) ||
    die "--python=$python: no such Python interpreter (install Python 3.11, e.g. apt-get install python3.11-venv, and pass --python=python3.11)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "--python=$python is Python $version; the tested stack needs 3.11 or later (install python3.11 and pass --python=python3.11)"
}

# Creates the virtual environment VENV with PYTHON when it has none, then
# installs this checkout and jax[EXTRA] into it, every package at its
# constraints.txt pin (pip is quick when all is installed already).
install_venv() {
  local venv=$1 python=$2 extra=$3
  if [[ ! -x $venv/bin/python ]]; then
    check_python "$python"
    run "$python" -m venv "$venv"
  fi
  run "$venv/bin/python" -m pip install -q -c "${repo:?}/constraints.txt" \
    -e "$repo" "jax[$extra]==$(pin jax)"
}
