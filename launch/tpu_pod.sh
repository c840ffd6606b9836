#!/usr/bin/env bash
# Pre-trains on a Cloud TPU pod slice: creates the TPU VMs, installs this
# checkout on every worker, runs the same main command on all workers (each
# is one JAX process; jax.distributed finds the others through the TPU
# metadata), streams their output here, and deletes the TPU VMs at the end.
#
#   launch/tpu_pod.sh --zone=us-central2-b --accelerator-type=v4-32 \
#       --runtime-version=tpu-ubuntu2204-base --bucket=gs://my-bucket \
#       --config=experiments/gn_ws.py [--name=byol-v4-32] [--project=P] \
#       [--run=gn_ws] [--spot] [--keep] [--dry-run] [-- extra main.py flags]
#
# The workdir is BUCKET/RUN (checkpoints, metrics, TensorBoard): every worker
# must see it, so it is a GCS bucket (create it in the TPU's region). Rerun the
# same command to resume from its last checkpoint. --dry-run prints every
# command (shell-quoted) without running any.
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
}

script=tpu_pod.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

name='' zone='' accelerator_type='' runtime_version='' bucket='' project=''
run_name=''
config=experiments/gn_ws.py
spot=0 keep=0 dry_run=0
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
    --run=*) run_name=${1#*=} ;;
    --spot) spot=1 ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
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
bucket=${bucket%/}
name=${name:-byol-${accelerator_type}}
config_file=${config%%:*}
run_name=${run_name:-$(basename "$config_file" .py)}
workdir=$bucket/$run_name

repo=$(cd "$(dirname "$0")/.." && pwd)
[[ -f $repo/$config_file ]] || die "--config=$config: $config_file is not a file of $repo"

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
create_flags=(--accelerator-type="$accelerator_type" --version="$runtime_version")
((!spot)) || create_flags+=(--spot)

delete_tpu() {
  run gcloud compute tpus tpu-vm delete "$name" "${scope[@]}" --quiet
}

# The checkout's tracked files, as they are in the working tree.
tarball=$(mktemp "${TMPDIR:-/tmp}/byol_jax.XXXXXX")
trap 'rm -f "$tarball"' EXIT
if ((!dry_run)); then
  (cd "$repo" && git ls-files -z | tar --null -czf "$tarball" -T -)
fi
echo "# tar the tracked files of $repo into $tarball"

run gcloud compute tpus tpu-vm create "$name" "${scope[@]}" "${create_flags[@]}"
if ((keep)); then
  echo "# --keep: the TPU VMs stay up; delete them with:"
  echo "#  $(quote gcloud compute tpus tpu-vm delete "$name" "${scope[@]}" --quiet)"
else
  trap 'rm -f "$tarball"; delete_tpu' EXIT
fi

run gcloud compute tpus tpu-vm scp "$tarball" "$name:byol_jax.tar.gz" \
  "${scope[@]}" --worker=all

# A fresh virtual environment with this checkout and JAX for TPUs.
install='rm -rf ~/byol_jax && mkdir -p ~/byol_jax'
install+=' && tar -xzf ~/byol_jax.tar.gz -C ~/byol_jax'
install+=' && { python3 -m venv ~/venv || { sudo apt-get -qq update'
install+=' && sudo apt-get -qq install -y python3-venv && python3 -m venv ~/venv; }; }'
install+=' && ~/venv/bin/pip install -q --upgrade pip'
install+=' && ~/venv/bin/pip install -q -e ~/byol_jax "jax[tpu]>=0.4.35,<0.12"'
run gcloud compute tpus tpu-vm ssh "$name" "${scope[@]}" --worker=all \
  --command="$install"

# The same command on every worker: each is one process of the run.
main=(python -m byol_jax.main --config="$config" --workdir="$workdir" "${extra[@]}")
run gcloud compute tpus tpu-vm ssh "$name" "${scope[@]}" --worker=all \
  --command="set -o pipefail; cd ~/byol_jax && . ~/venv/bin/activate && $(quote "${main[@]}") 2>&1 | tee -a ~/byol_run.log"
echo "# done: results in $workdir"
