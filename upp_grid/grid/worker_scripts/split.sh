#!/usr/bin/env bash
# upp-grid worker-node entry point: split the job's input files into one output, split.tar.
#
#   bash grid/split.sh --samples SAMPLE[,SAMPLE...] INPUT[,INPUT...]
#
# Run from the directory the sandbox was unpacked into (the job's work directory); split.tar is
# written there. The full contract, with the exit codes, is in grid/README.md:
#   10  the sandbox or the node cannot run the job (set-up failed)
#   11  the run-time imports do not load (pre-flight check, before any input is read)
#   1 / 2 / 3  from the payload (input or config unusable / unexpected / bookkeeping)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail() { echo "upp-grid job: error: $*" >&2; exit 10; }

[ -f "$root/runtime.sh" ] || fail "$root/runtime.sh not found: the sandbox is incomplete"
[ -f "$root/config.yaml" ] || fail "$root/config.yaml not found: the sandbox is incomplete"
# shellcheck source=/dev/null
. "$root/runtime.sh"   # UPP_RUNTIME, UPP_PYTHON_HOME, UPP_LSETUP, UPP_IMAGE (written by submit)

# shared scratch (NFS, Lustre, CephFS) may refuse HDF5's file locks; every file here is the job's
export HDF5_USE_FILE_LOCKING=FALSE
# nothing from the node's setup may leak into the job's Python
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE VIRTUAL_ENV
export PYTHONNOUSERSITE=1

case "${UPP_RUNTIME:-}" in
venv)
    [ -f "$root/env/pyvenv.cfg" ] || fail "$root/env/pyvenv.cfg not found: the sandbox is incomplete"
    if [ -n "${UPP_LSETUP:-}" ]; then
        # the same `lsetup` that built env/: it sets LD_LIBRARY_PATH for its Python
        export ATLAS_LOCAL_ROOT_BASE="${ATLAS_LOCAL_ROOT_BASE:-/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase}"
        [ -f "$ATLAS_LOCAL_ROOT_BASE/user/atlasLocalSetup.sh" ] \
            || fail "ATLASLocalRootBase not found at $ATLAS_LOCAL_ROOT_BASE (no CVMFS on this node?)"
        set +eu
        # shellcheck source=/dev/null
        . "$ATLAS_LOCAL_ROOT_BASE/user/atlasLocalSetup.sh" --quiet >/dev/null 2>&1
        lsetup "$UPP_LSETUP" >/dev/null 2>&1
        rc=$?
        set -eu
        [ "$rc" -eq 0 ] || fail "lsetup \"$UPP_LSETUP\" failed (exit $rc) on this node"
        unset PYTHONPATH PYTHONHOME
    fi
    [ -d "$UPP_PYTHON_HOME" ] || fail "base Python '$UPP_PYTHON_HOME' (home in env/pyvenv.cfg)" \
        "is not on this node: build env/ with a CVMFS Python (see grid/README.md)"
    # the base interpreter's libpython, for interpreters built without an rpath
    export LD_LIBRARY_PATH="$UPP_PYTHON_HOME/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    python="$root/env/bin/python"
    ;;
container)
    # inside the image (prun --containerImage): its python3 has the run-time dependencies;
    # the sandbox's code/ holds the upp_grid that planned the task and takes precedence
    [ -d "$root/code/upp_grid" ] || fail "$root/code/upp_grid not found: the sandbox is incomplete"
    python="$(command -v python3 || true)"
    [ -n "$python" ] || fail "no python3 in the container image ${UPP_IMAGE:-?}"
    export PYTHONPATH="$root/code"
    ;;
*)
    fail "unknown runtime '${UPP_RUNTIME:-}' in $root/runtime.sh"
    ;;
esac

echo "upp-grid job: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?') in $PWD" \
    "(runtime ${UPP_RUNTIME}${UPP_IMAGE:+ image $UPP_IMAGE}${UPP_LSETUP:+ lsetup $UPP_LSETUP})"
"$python" -m upp_grid.grid.preflight || exit $?
exec "$python" -m upp_grid.grid.worker --config "$root/config.yaml" "$@"
