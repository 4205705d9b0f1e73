#!/usr/bin/env bash
# Build ./env: a virtualenv with upp-grid installed (non-editable, because this venv is what
# the grid sandbox ships to the worker nodes).
#
#   bash scripts/setup_env.sh          # runtime install (what the grid needs)
#   bash scripts/setup_env.sh --dev    # + test extras (pytest, ruff, pyte)
#   bash scripts/setup_env.sh --lsetup "python 3.11.9-x86_64-el9"
#                                      # build with that ATLAS `lsetup` Python (lxplus, for the
#                                      # grid: the job repeats the same lsetup on the node)
#
# Idempotent: rerunning reuses ./env and reinstalls upp-grid from the current checkout.
# On lxplus run `setupATLAS` first if you like; a Python >= 3.10 must be on PATH (on
# Alma9 lxplus the system python3 is 3.9: use e.g. `lsetup "python 3.11.9-x86_64-el9"`,
# or point PYTHON at any python >= 3.10: `PYTHON=/path/to/python3.11 bash scripts/setup_env.sh`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="${UPP_GRID_ENV:-$here/env}"
extras=""
lsetup_spec=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dev) extras="[test]" ;;
        --lsetup) [ $# -ge 2 ] || { echo "setup_env.sh: --lsetup needs a value" >&2; exit 2; }
                  lsetup_spec="$2"; shift ;;
        --lsetup=*) lsetup_spec="${1#--lsetup=}" ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "setup_env.sh: unknown option '$1' (use --dev, --lsetup or --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "$lsetup_spec" ]; then
    export ATLAS_LOCAL_ROOT_BASE="${ATLAS_LOCAL_ROOT_BASE:-/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase}"
    if [ ! -f "$ATLAS_LOCAL_ROOT_BASE/user/atlasLocalSetup.sh" ]; then
        echo "setup_env: --lsetup needs ATLASLocalRootBase ($ATLAS_LOCAL_ROOT_BASE not found)" >&2
        exit 1
    fi
    set +eu
    # shellcheck source=/dev/null
    . "$ATLAS_LOCAL_ROOT_BASE/user/atlasLocalSetup.sh" --quiet
    lsetup "$lsetup_spec"
    rc=$?
    set -eu
    [ "$rc" -eq 0 ] || { echo "setup_env: lsetup \"$lsetup_spec\" failed ($rc)" >&2; exit 1; }
    PYTHON="${PYTHON:-$(command -v python3)}"
    rm -rf "$env_dir"  # a venv of another interpreter would be reused otherwise
fi

# ATLAS setups export PYTHONPATH/PYTHONHOME pointing into releases; they would leak into the venv.
unset PYTHONPATH PYTHONHOME

pick_python() {
    local cand
    for cand in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

if [ -x "$env_dir/bin/python" ] && "$env_dir/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup_env: reusing $env_dir"
else
    if ! py="$(pick_python)"; then
        echo "setup_env: need Python >= 3.10 with the venv module on PATH (set PYTHON=...)." >&2
        echo "           on lxplus: setupATLAS && lsetup \"python 3.11.9-x86_64-el9\"" >&2
        exit 1
    fi
    rm -rf "$env_dir"
    echo "setup_env: creating $env_dir with $("$py" --version 2>&1)"
    "$py" -m venv "$env_dir"
fi

pip=("$env_dir/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install --quiet --upgrade pip setuptools wheel
# dependencies first (cached after the first run), then upp-grid itself, always fresh and
# non-editable so ./env is relocatable into the grid sandbox.
"${pip[@]}" install --quiet "$here$extras"
"${pip[@]}" install --quiet --no-deps --force-reinstall --no-build-isolation "$here"
rm -rf "$here/build" "$here"/*.egg-info

# what built this env, for the grid job to repeat (upp_grid.grid.sandbox reads it)
if [ -n "$lsetup_spec" ] || [ ! -f "$env_dir/upp-grid-runtime.json" ]; then
    "$env_dir/bin/python" - "$env_dir" "$lsetup_spec" <<'PY'
import json, os, sys
env, spec = sys.argv[1], sys.argv[2]
home = next((line.partition("=")[2].strip() for line in open(os.path.join(env, "pyvenv.cfg"))
             if line.partition("=")[0].strip() == "home"), "")
path = os.path.join(env, "upp-grid-runtime.json")
with open(path + ".tmp", "w") as f:
    json.dump({"python_home": home, "lsetup": spec or None,
               "python_version": sys.version.split()[0]}, f, indent=1)
os.replace(path + ".tmp", path)
PY
fi

version="$("$env_dir/bin/upp-grid" --version)"
echo "setup_env: ready: $version in $env_dir"
if [ -n "$extras" ]; then
    echo "next: env/bin/python -m pytest        (tests)"
else
    echo "next: env/bin/upp-grid demo           (runs the whole chain on mock data)"
fi
