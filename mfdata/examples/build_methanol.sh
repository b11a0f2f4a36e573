#!/usr/bin/env bash
# Rebuild the bundled multi-level methanol store (mfdata/examples/methanol) from nothing.
# Usage: mfdata/examples/build_methanol.sh [WORKDIR] (default ./methanol-build); WORKERS=N for
# N processes per labelling step. Resumable: rerun after an interruption and each step goes on
# where it stopped (mfdata label keeps a journal; finished steps are skipped).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-methanol-build}
WORKERS=${WORKERS:-1}
mkdir -p "$WORK" && cd "$WORK"
export MFKIT_HOME="$PWD/home"  # the build's store names stay out of the user's registry
export OMP_NUM_THREADS=1
step() { echo "== $(date -u +%FT%TZ) $*"; }

# 1. 1000 geometries: GFN2-xTB Langevin MD at 500 K, 0.5 fs steps, 2 ps equilibration, then one
#    frame every 200 steps (100 fs, past the velocity decorrelation time of the thermostat)
[ -f md.extxyz ] || { step sample; mfdata sample CH3OH --n 1000 --temperature 500 --seed 0 \
    --timestep 0.5 --interval 200 --equilibration 4000 --out md.extxyz; }
# 2. labels: GFN2-xTB for all; wB97X for 200 and CCSD(T) for 100, nested (same seed)
[ -d gfn2 ] || { step gfn2-xtb; mfdata label md.extxyz --level gfn2-xtb --labels energy,forces \
    --workers "$WORKERS" --out gfn2; }
[ -d wb97x ] || { step wb97x; mfdata label md.extxyz --level wb97x-631gd-pyscf \
    --labels energy,forces --n 200 --seed 0 --workers "$WORKERS" --out wb97x; }
[ -d ccsdt ] || { step ccsdt; mfdata label md.extxyz --level ccsdt-ccpvdz-pyscf --labels energy \
    --n 100 --seed 0 --workers "$WORKERS" --out ccsdt; }
# 3. one record per geometry, the default split, and the copy shipped in the package
[ -d methanol ] || { step merge; mfdata merge gfn2 wb97x ccsdt --out methanol --name methanol; }
step split; python -m mfdata.examples.methanol methanol
mfdata verify methanol
[ -d "$HERE/methanol-store" ] || cp -r methanol "$HERE/methanol-store"
step done
