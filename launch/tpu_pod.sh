#!/usr/bin/env bash
# Pre-trains on a Cloud TPU pod slice: creates the TPU VMs (or reuses them),
# installs this checkout on every worker, starts the same main command on all
# workers (each is one JAX process; jax.distributed finds the others through
# the TPU metadata), follows the run, and deletes the TPU VMs when it ends.
#
#   launch/tpu_pod.sh --zone=us-central2-b --accelerator-type=v4-32 \
#       --runtime-version=tpu-ubuntu2204-base --bucket=gs://my-bucket \
#       --config=experiments/gn_ws.py [--data-dir=gs://my-bucket/tfds] \
#       [--name=byol-v4-32] [--project=P] [--run=gn_ws] [--spot] [--queued] \
#       [--keep] [--attach] [--dry-run] [-- extra main.py flags]
#
# The workdir is BUCKET/RUN (checkpoints, metrics, TensorBoard, and the
# workers' console logs in logs/): every worker must see it, so it is a GCS
# bucket (create it in the TPU's region). --data-dir is TFDS's data_dir
# (where ImageNet was prepared once). The config must be committed: the
# workers get the checkout's tracked files. Each worker gets Python 3.11 (uv)
# and the pinned stack (launch/tpu_worker.sh install); the run has
# --require_accelerator and --require_pinned_stack.
#
# The run is detached on the workers: a lost connection, or Ctrl-C here,
# leaves it going (this script reconnects, or prints how to re-attach). The
# TPU VMs are deleted when the run ends, or when a step before it fails
# (--keep: never). Rerunning the same command reuses existing TPU VMs, and
# resumes from the last checkpoint (or re-attaches to a run still going on);
# --attach only follows (and then deletes). --queued asks for the slice
# through a queued resource (waits for capacity instead of failing), --spot
# for Spot VMs. --dry-run prints every command (shell-quoted) without running
# any. TPU_POD_RETRY_S (60), TPU_POD_RETRIES (30) and TPU_POD_POLL_S (60)
# set the reconnection and queue polling.
set -euo pipefail

script=tpu_pod.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$repo/launch/lib.sh"

args=(${1+"$@"})
name='' zone='' accelerator_type='' runtime_version='' bucket='' project=''
run_name='' data_dir=''
config=experiments/gn_ws.py
spot=0 queued=0 keep=0 attach=0 dry_run=0
extra=()
while (($#)); do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type=*) accelerator_type=${1#*=} ;;
    --runtime-version=*) runtime_version=${1#*=} ;;
    --bucket=*) bucket=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --data-dir=*) data_dir=${1#*=} ;;
    --run=*) run_name=${1#*=} ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --keep) keep=1 ;;
    --attach) attach=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) print_usage 2; exit 0 ;;
    --) shift; extra=(${1+"$@"}); break ;;
    *) die "unknown argument '$1' (--help lists the options)" ;;
  esac
  shift
done

[[ -n $zone ]] || die "--zone is required (e.g. --zone=us-central2-b)"
[[ -n $accelerator_type ]] ||
  die "--accelerator-type is required (e.g. --accelerator-type=v4-32)"
[[ -n $runtime_version ]] ||
  die "--runtime-version is required (e.g. --runtime-version=tpu-ubuntu2204-base)"
[[ -n $bucket ]] || die "--bucket is required (e.g. --bucket=gs://my-bucket)"
[[ $bucket == gs://?* ]] ||
  die "--bucket=$bucket must be a gs:// URL: every worker writes the same workdir"
[[ -z $data_dir || $data_dir == gs://?* ]] ||
  die "--data-dir=$data_dir must be a gs:// URL: every worker reads the same data"
bucket=${bucket%/}
name=${name:-byol-${accelerator_type}}
config_file=${config%%:*}
run_name=${run_name:-$(basename "$config_file" .py)}
workdir=$bucket/$run_name
log_url=$workdir/logs

[[ -f $repo/$config_file ]] || die "--config=$config: $config_file is not a file of $repo"
if ((!attach)); then
  git -C "$repo" ls-files --error-unmatch -- "$config_file" > /dev/null 2>&1 ||
    die "--config=$config: $config_file is not tracked by git, so it would not reach the workers (git add $config_file && git commit)"
  git -C "$repo" diff --quiet HEAD -- "$config_file" ||
    die "--config=$config: $config_file has uncommitted changes; commit them first, so that the run's config is in git"
fi

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
queue=(gcloud compute tpus queued-resources)
worker_script='bash ~/byol_jax/launch/tpu_worker.sh'

ssh_all=("${tpu[@]}" ssh "$name" "${scope[@]}" --worker=all)

# Prints a command like run(), and runs it (unless --dry-run) with its output
# in $query_out; returns its status.
query() {
  printf '+ %s\n' "$(quote ${1+"$@"})"
  query_out=''
  ((!dry_run)) || return 0
  query_out=$(${1+"$@"} 2> /dev/null)
}

delete_tpu() {
  if ((queued)); then
    run "${queue[@]}" delete "$name" "${scope[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${scope[@]}" --quiet
  fi
}

delete_command() {
  if ((queued)); then
    quote "${queue[@]}" delete "$name" "${scope[@]}" --force --quiet
  else
    quote "${tpu[@]}" delete "$name" "${scope[@]}" --quiet
  fi
}

# On exit: the tarball goes; the TPU VMs too unless --keep or a run is left
# going on them (detached).
tarball='' delete_on_exit=0
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  [[ -z $tarball ]] || rm -f "$tarball"
  if ((delete_on_exit && !keep)); then
    delete_tpu || status=1
  elif ((delete_on_exit)); then
    echo "# --keep: the TPU VMs stay up; delete them with:"
    echo "#  $(delete_command)"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# This command line with --attach (and without --dry-run).
again=("$0" --attach) ours=1
for arg in ${args[@]+"${args[@]}"}; do
  [[ $arg != -- ]] || ours=0
  ((ours)) && [[ $arg == --dry-run || $arg == --attach ]] || again+=("$arg")
done
reattach=$(quote "${again[@]}")
detach_note() {
  echo "# The run goes on on the TPU VMs without this terminal. Follow it with:"
  echo "#  $reattach"
  echo "# (waits for the end, then deletes the TPU VMs unless --keep), or read its log:"
  echo "#  $(quote "${tpu[@]}" ssh "$name" "${scope[@]}" --worker=0 --command='tail -F ~/byol_run/log')"
  echo "#  $(quote gcloud storage cat "$log_url/worker-0.log")"
  echo "# Stop it by deleting the TPU VMs:"
  echo "#  $(delete_command)"
}

# 1. The TPU VMs: reuse them when they exist, else create them.
state='' created=0
if ((queued)); then
  query "${queue[@]}" describe "$name" "${scope[@]}" --format='value(state.state)' ||
    true
else
  query "${tpu[@]}" describe "$name" "${scope[@]}" --format='value(state)' || true
fi
state=$query_out
if ((attach)); then
  [[ $state == READY || $state == ACTIVE ]] || ((dry_run)) ||
    die "--attach: no TPU VMs $name ready in $zone (state: ${state:-none}); nothing to attach to"
else
  if [[ $state == PREEMPTED ]]; then
    echo "# TPU VMs $name were preempted: deleting them to create them anew"
    delete_tpu
    state=''
  fi
  case $state in
    '')
      if ((queued)); then
        flags=(--node-id="$name" --accelerator-type="$accelerator_type"
          --runtime-version="$runtime_version")
        ((!spot)) || flags+=(--spot)
        run "${queue[@]}" create "$name" "${scope[@]}" "${flags[@]}"
      else
        flags=(--accelerator-type="$accelerator_type" --version="$runtime_version")
        ((!spot)) || flags+=(--spot)
        run "${tpu[@]}" create "$name" "${scope[@]}" "${flags[@]}"
      fi
      delete_on_exit=1 created=1
      ;;
    READY | ACTIVE) echo "# TPU VMs $name exist ($state): reusing them" ;;
    ACCEPTED | WAITING_FOR_RESOURCES | PROVISIONING | CREATING) ((queued)) ||
      die "TPU VMs $name are $state: wait until they are READY, or delete them: $(delete_command)" ;;
    *) die "TPU VMs $name are $state: delete them ($(delete_command)) and rerun" ;;
  esac
  # A queued resource waits for capacity: poll until it is ACTIVE.
  while ((queued && !dry_run)) && [[ $state != ACTIVE ]]; do
    state=$("${queue[@]}" describe "$name" "${scope[@]}" --format='value(state.state)')
    case $state in
      ACTIVE) ;;
      ACCEPTED | WAITING_FOR_RESOURCES | PROVISIONING | CREATING)
        echo "# queued resource $name: $state; checking again in ${TPU_POD_POLL_S:-60} s"
        sleep "${TPU_POD_POLL_S:-60}" ;;
      *) echo "$script: queued resource $name is ${state:-gone}" >&2; exit 1 ;;
    esac
  done
fi

# 2. Unless a run is going on already: this checkout on every worker, then
# the run, detached.
going=0
if ((!created && !dry_run)); then
  query "${ssh_all[@]}" \
    --command="$worker_script status 2> /dev/null || echo byol-run state=none" || true
  [[ $query_out != *state=running* ]] || going=1
fi
if ((attach)); then
  ((going || dry_run)) || echo "# --attach: no run is going on; showing how the last one ended"
elif ((going)); then
  echo "# A run is going on on $name: following it instead of starting another"
else
  delete_on_exit=1  # a failure from here to the start deletes the TPU VMs
  # The checkout's tracked files, as they are in the working tree.
  tarball=$(mktemp "${TMPDIR:-/tmp}/byol_jax.XXXXXX")
  if ((!dry_run)); then
    (cd "$repo" && git ls-files -z | tar --null -czf "$tarball" -T -)
  fi
  echo "# tar the tracked files of $repo into $tarball"
  changed=$(git -C "$repo" status --porcelain --untracked-files=no | wc -l | tr -d ' ')
  ((changed == 0)) ||
    echo "# note: $changed tracked files have uncommitted changes; the workers get them as they are here"
  run "${tpu[@]}" scp "$tarball" "$name:byol_jax.tar.gz" "${scope[@]}" --worker=all
  unpack='rm -rf ~/byol_jax && mkdir -p ~/byol_jax && tar -xzf ~/byol_jax.tar.gz -C ~/byol_jax'
  run "${ssh_all[@]}" --command="$unpack && $worker_script install"

  # The same command on every worker: each is one process of the run.
  main=(--config="$config" --workdir="$workdir" --require_accelerator
    --require_pinned_stack)
  [[ -z $data_dir ]] || main+=(--config.data.data_dir="$data_dir")
  main+=(${extra[@]+"${extra[@]}"})
  run "${ssh_all[@]}" \
    --command="$worker_script start $(quote "$log_url") -- $(quote "${main[@]}")"
fi

# 3. Follow the run until it ends, reconnecting when the connection drops.
# From here on, an interruption leaves the run (and the TPU VMs) going.
delete_on_exit=0
# The ssh that follows the run goes in the background and the shell waits
# for it with `wait`, which a trapped signal interrupts at once: a foreground
# gcloud that catches Ctrl-C itself (it is Python) would make bash skip the
# INT trap and reconnect instead of detaching.
follow_pid=
# shellcheck disable=SC2317  # run by the traps
stop_following() {
  if [[ -n $follow_pid ]]; then
    pkill -P "$follow_pid" 2> /dev/null || true
    kill "$follow_pid" 2> /dev/null || true
  fi
}
trap 'echo; stop_following; detach_note; exit 130' INT
trap 'stop_following; detach_note; exit 143' TERM
trap 'exit 129' HUP
detach_note
failures=0
while :; do
  run "${ssh_all[@]}" --command="$worker_script wait" &
  follow_pid=$!
  wait "$follow_pid" || true
  follow_pid=
  if query "${ssh_all[@]}" --command="$worker_script status"; then
    if [[ $query_out != *state=running* ]]; then
      break
    fi
    failures=0
  else
    failures=$((failures + 1))
    query "${tpu[@]}" describe "$name" "${scope[@]}" --format='value(state)' || true
    if [[ -n $query_out && $query_out != READY ]]; then
      echo "# TPU VMs $name are $query_out: the run stopped; rerun this command to resume from its last checkpoint"
      delete_on_exit=1
      exit 1
    fi
    if ((failures > ${TPU_POD_RETRIES:-30})); then
      echo "# no connection to $name after $failures tries; stopped following"
      detach_note
      exit 1
    fi
  fi
  echo "# connection lost; the run goes on; reconnecting in ${TPU_POD_RETRY_S:-60} s"
  sleep "${TPU_POD_RETRY_S:-60}"
done

# 4. The run has ended on every worker: its status, then the TPU VMs go.
delete_on_exit=1
printf '%s\n' "$query_out" | grep '^byol-run ' || true
status=0
if [[ $query_out == *state=lost* ]]; then
  status=1
elif [[ -n $query_out && $query_out != *state=done* ]]; then
  echo "# no run was found on $name"
  status=1
fi
for rc in $(printf '%s\n' "$query_out" | sed -n 's/.* rc=\([0-9]*\).*/\1/p'); do
  ((rc == 0 || status != 0)) || status=$rc
done
echo "# run ended (exit status $status): results in $workdir"
exit "$status"
