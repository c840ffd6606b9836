#!/usr/bin/env bash
# Helpers shared by the launch scripts (sourced, not run). The sourcing script
# sets `script` (its name, for messages) and, for run(), `dry_run`.

# A usage error: one line naming the problem, exit status 2.
die() {
  echo "${script:-launch}: $*" >&2
  echo "Run with --help for usage." >&2
  exit 2
}

# The arguments as one shell-quoted line (single quotes where needed).
quote() {
  local out='' arg
  for arg in "$@"; do
    if [[ $arg =~ ^[-A-Za-z0-9_./:=,@+%]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "${out# }"
}

# Prints a command (runnable as printed), then runs it unless --dry-run.
run() {
  printf '+ %s\n' "$(quote "$@")"
  if ((!${dry_run:-0})); then
    "$@"
  fi
}
