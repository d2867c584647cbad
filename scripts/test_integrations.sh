#!/usr/bin/env bash
# Install an integration extra into its own venv and run its tests (docs/integrations.md).
#
#   scripts/test_integrations.sh trl    # TRL 1.16.0: tiny in-process Qwen2, real GRPOTrainer steps (~3 min cold)
#   scripts/test_integrations.sh verl   # verl 0.9.1 (verl-core; CPU only: ray, tensordict, …; ~5.5 min cold)
#   scripts/test_integrations.sh all
#
# Each framework gets its own venv (verl pins transformers<5.11), kept under
#   ${RLKL_INTEGRATIONS_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/rlkl/venvs}/<framework>
# and reused while its pins are unchanged, so reruns only run the tests. torch is pinned to the version of the
# system python3's torch (default 2.13.0), CPU build, so no CUDA wheels are pulled. Extra arguments after the
# framework go to pytest. Exit status is pytest's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
TRL_PINS=("trl==1.16.0")
VERL_PINS=("verl[verl-core]==0.9.1")
VENVS=${RLKL_INTEGRATIONS_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/rlkl/venvs}

usage() { echo "usage: $0 trl|verl|all [pytest args...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
what=$1; shift
case "$what" in trl|verl) frameworks=("$what");; all) frameworks=(trl verl);; *) usage;; esac

SYS_TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)
TORCH_VERSION=${RLKL_TORCH_VERSION:-$SYS_TORCH}

setup_venv() {  # $1 = framework; prints the venv's python
  local fw=$1 venv="$VENVS/$1" pins stamp constraints
  if [ "$fw" = trl ]; then pins=("${TRL_PINS[@]}"); else pins=("${VERL_PINS[@]}"); fi
  stamp="torch==$TORCH_VERSION ${pins[*]}"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.rlkl-stamp" 2>/dev/null)" = "$stamp" ]; then
    # a venv built before the test extra gained pytest-xdist (the repository's addopts pass -n): add it
    "$venv/bin/python" -c "import xdist" 2>/dev/null \
      || "$venv/bin/python" -m pip install -q -c "$venv/rlkl-constraints.txt" "pytest-xdist>=3.5" >&2
    echo "$venv/bin/python"; return
  fi
  local t0=$SECONDS
  echo "== creating $venv ($stamp)" >&2
  rm -rf "$venv"
  mkdir -p "$VENVS"
  "$PY" -m venv "$venv"
  constraints="$venv/rlkl-constraints.txt"
  echo "torch==$TORCH_VERSION" > "$constraints"
  # the CPU wheel: from this machine's wheel store when there, else PyTorch's CPU index
  "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" >&2 2>/dev/null \
    || "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu >&2
  "$venv/bin/python" -m pip install -q -c "$constraints" -e "$ROOT[test]" "${pins[@]}" >&2
  echo "$stamp" > "$venv/.rlkl-stamp"
  echo "== $fw venv ready in $((SECONDS - t0)) s" >&2
  echo "$venv/bin/python"
}

status=0
for fw in "${frameworks[@]}"; do
  vpy=$(setup_venv "$fw")
  t0=$SECONDS
  echo "== pytest tests/test_integrations_$fw.py ($("$vpy" -m pip show "$fw" 2>/dev/null | sed -n 's/^Version: //p'))"
  (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$vpy" -m pytest "tests/test_integrations_$fw.py" \
     -p no:cacheprovider -rs "$@") || status=$?
  echo "== $fw tests: $((SECONDS - t0)) s"
done
exit $status
