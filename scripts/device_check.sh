#!/usr/bin/env bash
# The prepared GPU check (reft/bench/device_check.py): on a CUDA machine, in under 8 minutes and unattended,
# the device tests on CUDA, a short paper-profile run (ResNet-18, CIFAR-shaped data made here) in fp32 and
# bf16 under the phase profiler, results in results/gpu/. Then, on any machine:
#   python scripts/paper_estimate.py --measured results/gpu/rounds.csv
#
# Usage: scripts/device_check.sh [--dry-run] [--out DIR] [--budget-s S] [--rounds N] [--no-tests] [--help]
#   --dry-run   the same steps on the CPU at tiny sizes (what CI runs; writes to a temp folder unless --out)
#   --budget-s  no step starts after S seconds (default 420); the whole check is killed at 480 s regardless
# Python: .venv/bin/python when present (make setup), else python3 (a GPU image's own torch).
# A bare GPU image without internet lacks two things; prepare them here and carry both folders (device tool):
#   pip download --no-deps torch-pruning==1.6.1 -d .whl      # installed from .whl/ when torch_pruning is missing
#   mkdir -p .devdata/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz .devdata/FashionMNIST/raw/
#                                                            # the device tests' data (REFT_DATA=.devdata)
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
case " $* " in
  *" --help "* | *" -h "*) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exec "$py" -m reft.bench.device_check --help ;;
esac
if ! "$py" -c "import torch_pruning" 2>/dev/null && [ -d .whl ]; then
  "$py" -m pip install --quiet --no-index --no-deps --find-links .whl torch-pruning
fi
[ -d .devdata ] && export REFT_DATA="$PWD/.devdata"
args=("$@")
if [[ " $* " == *" --dry-run "* && " $* " != *" --out "* ]]; then
  args+=(--out "$(mktemp -d)")
fi
exec timeout --kill-after=10 480 "$py" -m reft.bench.device_check "${args[@]}"
