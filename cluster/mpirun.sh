#!/usr/bin/env bash
# A cluster run with Open MPI: rank 0 coordinates, ranks 1..N-1 are workers,
# worker r holding shard (r-1)/(N-1) of every task's training data. Every node
# needs the same build, trunk and task files at the same paths.
# Usage: cluster/mpirun.sh RUN.conf [NP] [HOSTFILE]
set -euo pipefail
CONF=${1:?usage: cluster/mpirun.sh RUN.conf [NP] [HOSTFILE]}
NP=${2:-4}
HOSTS=${3:-cluster/hostfile.example}
# --bind-to none: graft runs its own OpenMP/OpenBLAS threads (--threads).
exec mpirun -np "$NP" --hostfile "$HOSTS" --bind-to none \
  build/graft mpi --config "$CONF" --threads 1
