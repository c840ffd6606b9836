#!/usr/bin/env bash
# Pre-trains on the GPUs of one machine.
#
#   launch/gpu_single_host.sh --config=experiments/gn_ws.py \
#       --workdir=/data/runs/gn_ws [--gpus=0,1,2,3] [--processes=1] \
#       [--port=12355] [--venv=.venv-cuda] [--python=python3] [--no-install] \
#       [--dry-run] [-- extra main.py flags]
#
# First installs this checkout with jax[cuda12] into --venv (created with
# --python, 3.11 or later, when missing), every package at its
# constraints.txt pin; --no-install uses the venv as it is. The run gets
# --require_accelerator and --require_pinned_stack: it stops in one line when
# JAX finds no GPU or another jax/jaxlib/CUDA plugin than the pins (pass
# `-- --norequire_accelerator` or `-- --norequire_pinned_stack` to allow).
# --processes=1 (default): one process pmaps over all the chosen GPUs; no
# jax.distributed. --processes=N splits the GPUs into N groups and starts one
# process per group, connected by jax.distributed on 127.0.0.1:PORT: the
# multi-host code path (per-host data shards, process-0-only logs, checkpoints
# from several processes) on one machine, for debugging before a pod run.
# A relative --workdir or --venv is the current directory's; the run starts
# in the checkout, where --config=experiments/... is read; gs:// URLs stay.
# --gpus defaults to every GPU nvidia-smi lists. Output lines of process i are
# prefixed with [i]. --dry-run prints every command without running any.
set -euo pipefail

script=gpu_single_host.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$repo/launch/lib.sh"

config='' workdir='' gpus='' processes=1 port=12355 dry_run=0
venv=$repo/.venv-cuda python=python3 install=1
extra=()
while (($#)); do
  case $1 in
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --gpus=*) gpus=${1#*=} ;;
    --processes=*) processes=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --no-install) install=0 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) print_usage 2; exit 0 ;;
    --) shift; extra=(${1+"$@"}); break ;;
    *) die "unknown argument '$1' (--help lists the options)" ;;
  esac
  shift
done

[[ -n $config ]] || die "--config is required (e.g. --config=experiments/gn_ws.py)"
[[ -n $workdir ]] || die "--workdir is required (a local path or gs:// URL)"
[[ $processes =~ ^[1-9][0-9]*$ ]] || die "--processes=$processes must be a positive integer"
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  die "--port=$port must be a TCP port (1-65535)"
fi
[[ -n $venv ]] || die "--venv= is empty: name the virtual environment (default .venv-cuda)"
# Relative to the caller's directory: the run starts in the checkout (cd below).
[[ $venv == /* ]] || venv=$PWD/$venv
[[ $workdir == /* || $workdir == *://* ]] || workdir=$PWD/$workdir
if ((!install)) && [[ ! -x $venv/bin/python ]]; then
  die "--venv=$venv has no bin/python: create it (drop --no-install) or name another"
fi
if [[ -z $gpus ]]; then
  command -v nvidia-smi > /dev/null ||
    die "nvidia-smi not found: pass the GPUs to use, e.g. --gpus=0,1,2,3"
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
fi
[[ $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus=$gpus must be comma-separated GPU indices"
IFS=, read -r -a gpu_list <<< "$gpus"
((${#gpu_list[@]} % processes == 0)) ||
  die "--gpus=$gpus (${#gpu_list[@]} GPUs) does not split into --processes=$processes equal groups"
per_process=$((${#gpu_list[@]} / processes))

cd "$repo"
((!install)) || install_venv "$venv" "$python" cuda12

main=("$venv/bin/python" -m byol_jax.main --config="$config" --workdir="$workdir"
  --require_accelerator --require_pinned_stack)
if ((processes == 1)); then
  cmd=(env CUDA_VISIBLE_DEVICES="$gpus" "${main[@]}" --distributed=off
    ${extra[@]+"${extra[@]}"})
  printf '+ %s\n' "$(quote "${cmd[@]}")"
  ((dry_run)) || exec "${cmd[@]}"
  exit 0
fi

pids=()
for ((i = 0; i < processes; i++)); do
  group=$(IFS=,; echo "${gpu_list[*]:i*per_process:per_process}")
  cmd=(env CUDA_VISIBLE_DEVICES="$group" "${main[@]}"
    --coordinator_address="127.0.0.1:$port" --num_processes="$processes"
    --process_id="$i" ${extra[@]+"${extra[@]}"})
  printf '+ %s 2>&1 | sed "s/^/[%d] /" &\n' "$(quote "${cmd[@]}")" "$i"
  if ((!dry_run)); then
    # A subshell, so that `wait` reports the pipeline's status (pipefail),
    # not sed's.
    ("${cmd[@]}" 2>&1 | sed "s/^/[$i] /") &
    pids+=($!)
  fi
done
((!dry_run)) || exit 0
# When one process fails, jax.distributed stops the others (the coordination
# service reports the failure to every process).
status=0
for pid in ${pids[@]+"${pids[@]}"}; do
  wait "$pid" || status=$?
done
exit "$status"
