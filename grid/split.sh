#!/usr/bin/env bash
# upp-grid worker-node entry point: split one input file into the declared outputs.
#
#   bash grid/split.sh --samples SAMPLE[,SAMPLE...] INPUT
#
# Run from the directory the sandbox was unpacked into (the job's work directory); the outputs
# output_<split>_<region>_<sample>_<flavour>.h5 are written there. Exits non-zero on any error.
# The full contract is in grid/README.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="$root/env"
fail() { echo "upp-grid job: error: $*" >&2; exit 10; }

# nothing from the node's setup may leak into the venv
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE VIRTUAL_ENV
export PYTHONNOUSERSITE=1

[ -f "$env_dir/pyvenv.cfg" ] || fail "$env_dir/pyvenv.cfg not found: the sandbox is incomplete"
[ -f "$root/config.yaml" ] || fail "$root/config.yaml not found: the sandbox is incomplete"
home="$(sed -n 's/^home *= *//p' "$env_dir/pyvenv.cfg" | head -n 1)"
[ -d "$home" ] || fail "base Python '$home' (home in env/pyvenv.cfg) is not on this node:" \
    "build env/ with a CVMFS Python (see grid/README.md)"
# the base interpreter's libpython, for interpreters built without an rpath
export LD_LIBRARY_PATH="$home/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "upp-grid job: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?') in $PWD"
exec "$env_dir/bin/python" -m upp_grid.grid.worker --config "$root/config.yaml" "$@"
