#!/usr/bin/env bash
# Runs on every TPU VM worker of a pod slice; launch/tpu_pod.sh calls it
# through `gcloud compute tpus tpu-vm ssh --worker=all`. The checkout is
# ~/byol_jax, the run's state ~/byol_run (pid, rc, log).
#
#   tpu_worker.sh install
#       uv (the version constraints.txt pins), a Python 3.11 virtual
#       environment in ~/venv (uv fetches that Python: TPU VM images ship
#       3.10, which the pinned jax does not support), then this checkout and
#       jax[tpu] (libtpu) into it, every package at its constraints.txt pin.
#   tpu_worker.sh start LOG_URL -- MAIN_FLAGS
#       starts `~/venv/bin/python -m byol_jax.main MAIN_FLAGS` in its own
#       session (setsid, nohup), so it outlives the ssh connection; output in
#       ~/byol_run/log, copied to LOG_URL/worker-N.log every
#       BYOL_LOG_UPLOAD_S seconds (60) and at the end (LOG_URL '': no copy).
#       Refuses (exit 3) while a run is going on.
#   tpu_worker.sh status
#       one line: `byol-run worker=N state=none|running|done|lost [rc=K]`
#       (lost: started, but ended without a status, e.g. killed).
#   tpu_worker.sh wait
#       waits for the run to end (worker 0 prints its log meanwhile, from
#       the last 20 lines); exits with the run's status.
#
# The worker number comes from the TPU metadata (BYOL_WORKER_ID overrides).
set -euo pipefail

checkout=$HOME/byol_jax
state=$HOME/byol_run
venv=$HOME/venv
python_version=3.11

die() {
  echo "tpu_worker.sh: ${*:-}" >&2
  exit 2
}

worker_id() {
  if [[ -n ${BYOL_WORKER_ID:-} ]]; then
    echo "$BYOL_WORKER_ID"
    return
  fi
  curl -sf -m 10 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number ||
    hostname
}

running_pid() {
  local pid
  [[ -s $state/pid && ! -s $state/rc ]] || return 1
  pid=$(cat "$state/pid")
  kill -0 "$pid" 2> /dev/null || return 1
  echo "$pid"
}

install() {
  local uv uv_version jax_version
  uv_version=$(sed -n 's/^uv==\([^ ;#]*\).*/\1/p' "$checkout/constraints.txt")
  jax_version=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$checkout/constraints.txt")
  [[ -n $uv_version && -n $jax_version ]] ||
    die "$checkout/constraints.txt pins no uv or jax"
  uv=$(command -v uv || echo "$HOME/.byol-uv/uv")
  if [[ ! -x $uv ]]; then
    curl -LsSf "https://astral.sh/uv/$uv_version/install.sh" |
      env UV_UNMANAGED_INSTALL="$HOME/.byol-uv" sh
  fi
  if ! "$venv/bin/python" -c "import sys; sys.exit(sys.version_info[:2] != (${python_version/./, }))" 2> /dev/null; then
    rm -rf "$venv"
    "$uv" venv --python "$python_version" "$venv"
  fi
  "$uv" pip install --python "$venv/bin/python" -c "$checkout/constraints.txt" \
    -e "$checkout" "jax[tpu]==$jax_version"
}

upload_log() {
  [[ -z $1 ]] || gcloud storage cp "$state/log" "$1/worker-$2.log" > /dev/null 2>&1 || true
}

start() {
  local log_url=$1 pid
  shift
  [[ ${1:-} == -- ]] && shift
  if pid=$(running_pid); then
    echo "tpu_worker.sh: a run is going on on worker $(worker_id) (pid $pid)" >&2
    exit 3
  fi
  mkdir -p "$state"
  rm -f "$state/pid" "$state/rc"
  [[ ! -e $state/log ]] || mv "$state/log" "$state/log.previous"
  setsid nohup bash "$0" _run "$log_url" ${1+"$@"} < /dev/null >> "$state/log" 2>&1 &
  for _ in $(seq 100); do
    [[ -s $state/pid ]] && break
    sleep 0.1
  done
  [[ -s $state/pid ]] || die "the run did not start (see $state/log)"
  echo "byol-run worker=$(worker_id) started pid=$(cat "$state/pid") log=$state/log"
}

# The detached run itself (started by `start`).
_run() {
  local log_url=$1 id uploader rc
  shift
  echo $$ > "$state/pid"
  id=$(worker_id)
  echo "# $(date -u +%FT%TZ) worker $id: python -m byol_jax.main ${*:-}"
  (while sleep "${BYOL_LOG_UPLOAD_S:-60}"; do upload_log "$log_url" "$id"; done) &
  uploader=$!
  rc=0
  (cd "$checkout" && exec "$venv/bin/python" -m byol_jax.main ${1+"$@"}) || rc=$?
  kill "$uploader" 2> /dev/null || true
  echo "# $(date -u +%FT%TZ) worker $id: exit status $rc"
  upload_log "$log_url" "$id"
  echo "$rc" > "$state/rc.tmp"
  mv "$state/rc.tmp" "$state/rc"
}

status() {
  local id
  id=$(worker_id)
  if [[ -s $state/rc ]]; then
    echo "byol-run worker=$id state=done rc=$(cat "$state/rc")"
  elif running_pid > /dev/null; then
    echo "byol-run worker=$id state=running pid=$(cat "$state/pid")"
  elif [[ -e $state/pid ]]; then
    echo "byol-run worker=$id state=lost"
  else
    echo "byol-run worker=$id state=none"
  fi
}

wait_run() {
  local id pid
  id=$(worker_id)
  [[ -e $state/pid ]] || die "no run was started on worker $id"
  if pid=$(running_pid); then
    if [[ $id == 0 ]]; then
      tail -n 20 -F --pid="$pid" "$state/log" 2> /dev/null || true
    else
      while kill -0 "$pid" 2> /dev/null; do sleep 1; done
    fi
  elif [[ $id == 0 ]]; then
    tail -n 20 "$state/log"
  fi
  if [[ ! -s $state/rc ]]; then
    echo "byol-run worker=$id state=lost"
    return 1
  fi
  if [[ $id != 0 && $(cat "$state/rc") != 0 ]]; then
    tail -n 30 "$state/log" | sed "s/^/[worker $id] /"
  fi
  status
  return "$(cat "$state/rc")"
}

case ${1:-} in
  install) install ;;
  start) shift; [[ $# -ge 1 ]] || die "start needs LOG_URL"; start ${1+"$@"} ;;
  _run) shift; _run ${1+"$@"} ;;
  status) status ;;
  wait) wait_run ;;
  *) die "usage: tpu_worker.sh install | start LOG_URL -- MAIN_FLAGS | status | wait" ;;
esac
