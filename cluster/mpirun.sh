#!/usr/bin/env bash
# A run with Open MPI: rank 0 coordinates, ranks 1..N-1 are workers, worker r
# holding shard (r-1)/(N-1) of every task's training data. With a HOSTFILE
# (cluster/hostfile.example shows the format) the ranks spread over its
# nodes, each of which needs the same build, trunk and task files at the same
# paths; without one they all run on this machine (more ranks than cores
# allowed). Extra graft options follow the HOSTFILE (give "" for none).
# Usage: cluster/mpirun.sh RUN.conf [NP] [HOSTFILE] [graft mpi options...]
#   bash cluster/mpirun.sh examples/tasks-quick.conf 4 "" --out runs/mpi
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -ge 1 ] && exit 0 || exit 2
fi
CONF=$1
NP=${2:-4}
HOSTS=${3:-}
shift $(($# < 3 ? $# : 3))
# Open MPI refuses root unless told; a cluster account is not root.
[ "$(id -u)" != 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WHERE=(--oversubscribe)
[ -z "$HOSTS" ] || WHERE=(--hostfile "$HOSTS")
# --bind-to none: graft runs its own OpenMP/OpenBLAS threads (--threads).
# The build beside this script, from any folder (every node needs it at the same path).
GRAFT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/graft"
exec mpirun -np "$NP" "${WHERE[@]}" --bind-to none \
  "$GRAFT" mpi --config "$CONF" --threads 1 "$@"
