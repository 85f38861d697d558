#!/usr/bin/env bash
# Launch a distillspec_jax job on a Cloud TPU VM (single host or a pod slice).
#
#   tpu_scripts/launch.sh --name ds-v4 --zone us-central2-b --project my-proj \
#       --accelerator v4-32 --create --config configs/paper/t5.py:task=xsum,target=xl \
#       --workdir gs://my-bucket/distillspec/xsum_xl -- --config.distill.divergence=tvd
#
# Steps: [create the VM] -> copy this checkout to every worker -> virtualenv with
# `pip install -e .[tpu]` -> run `python -m distillspec_jax.<module>` on all workers
# (multi-host initialisation happens there through --multihost) -> follow the log of
# worker 0 -> [delete the VM]. Arguments after `--` are passed to the module
# (config overrides). --dry-run prints every command instead of running it.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Flags:
  --name NAME            TPU VM name (required)
  --zone ZONE            GCP zone (required)
  --project PROJECT      GCP project (default: gcloud's configured project)
  --accelerator TYPE     accelerator type for --create, e.g. v4-8, v5litepod-16 (default v4-8)
  --version VERSION      TPU software version for --create (default tpu-ubuntu2204-base)
  --config FILE[:ARGS]   config file, relative to the repository (required)
  --workdir DIR          output directory, normally gs://... (required)
  --module NAME          train (default), main or evaluate
  --create               create the TPU VM first
  --delete               delete the TPU VM when the job ends
  --no-follow            start the job and return without following the log
  --dry-run              print the commands, run nothing
  -h, --help             this help
EOF
}

name="" zone="" project="" accelerator="v4-8" version="tpu-ubuntu2204-base"
config="" workdir="" module="train" create=0 delete=0 follow=1 dry_run=0
extra=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --module) module="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --delete) delete=1; shift ;;
    --no-follow) follow=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "launch.sh: unknown flag '$1' (see --help)" >&2; exit 2 ;;
  esac
done

for required in name zone config workdir; do
  if [[ -z "${!required}" ]]; then
    echo "launch.sh: --${required} is required (see --help)" >&2
    exit 2
  fi
done
if [[ "$delete" == 1 && "$follow" == 0 ]]; then
  echo "launch.sh: --delete needs the log followed (it would delete the VM under the job)" >&2
  exit 2
fi
if [[ "$module" != "train" && "$module" != "main" && "$module" != "evaluate" ]]; then
  echo "launch.sh: --module must be 'train', 'main' or 'evaluate', got '$module'" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config_file="${config%%:*}"
if [[ ! -f "$repo/$config_file" ]]; then
  echo "launch.sh: config file not found: $repo/$config_file" >&2
  exit 2
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
location=(--zone "$zone")
if [[ -n "$project" ]]; then
  location+=(--project "$project")
fi
remote_dir="distillspec_jax"
archive="/tmp/distillspec_jax_${name}.tar.gz"

# Runs (or, with --dry-run, prints) one command, quoting each argument.
run() {
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The job's command line on every worker, with each argument quoted.
job=(python -m "distillspec_jax.${module}" --config "$config" --workdir "$workdir")
# train runs on every worker (multi-host); main and evaluate are single-host programs
# that write their workdir from one process: worker 0 only.
job_workers=0
if [[ "$module" == "train" ]]; then
  job+=(--multihost)
  job_workers=all
fi
job+=("${extra[@]}")
job_line="$(printf '%q ' "${job[@]}")"

if [[ "$create" == 1 ]]; then
  run "${gcloud_tpu[@]}" create "$name" "${location[@]}" \
    --accelerator-type "$accelerator" --version "$version"
fi

# Copy the checkout (tracked files) to every worker.
run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
run "${gcloud_tpu[@]}" scp "$archive" "${name}:~/distillspec_jax.tar.gz" \
  --worker=all "${location[@]}"
run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${location[@]}" --command \
  "rm -rf ~/${remote_dir} && mkdir -p ~/${remote_dir} && tar -xzf ~/distillspec_jax.tar.gz -C ~/${remote_dir}"

# Virtualenv with the TPU extra.
run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${location[@]}" --command \
  "cd ~/${remote_dir} && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -e '.[tpu]'"

# Start the job in the background; logs in ~/distillspec_jax/run.log.
run "${gcloud_tpu[@]}" ssh "$name" --worker="$job_workers" "${location[@]}" --command \
  "cd ~/${remote_dir} && . .venv/bin/activate && nohup ${job_line}> run.log 2>&1 < /dev/null &"

if [[ "$follow" == 1 ]]; then
  # Follow worker 0 until the job's process ends.
  run "${gcloud_tpu[@]}" ssh "$name" --worker=0 "${location[@]}" --command \
    "cd ~/${remote_dir} && pid=\$(pgrep -f 'distillspec_jax.${module}' | head -n 1); if [ -n \"\$pid\" ]; then tail --pid=\"\$pid\" -n +1 -f run.log; else cat run.log; fi"
fi

if [[ "$delete" == 1 ]]; then
  run "${gcloud_tpu[@]}" delete "$name" "${location[@]}" --quiet
fi
