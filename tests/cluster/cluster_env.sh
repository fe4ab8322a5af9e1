# Sourced by the cluster test scripts: loopback-only UCX and Open MPI settings, and helpers.
# Nothing here needs a network: UCX talks over TCP on lo (its shared-memory transports
# cannot detect a dead peer, so with peer error handling UCX picks TCP anyway), Open MPI's
# own bootstrap traffic stays on lo too.
export UCX_TLS=tcp,sm,self
export UCX_NET_DEVICES=lo
export UCX_WARN_UNUSED_ENV_VARS=n
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_rmaps_base_oversubscribe=1
export DSR1_NO_PROGRESS_BAR=1

# cluster_tiny_model MODEL_DIR ROOT: makes the tiny-a checkpoint there with the golden
# generator (../shared/golden beside the repository ROOT) when it is missing; exits 77
# (skip) when it cannot
cluster_tiny_model() {
    local model=$1 golden=$2/../shared/golden
    [ -f "$model/config.json" ] && return 0
    [ -f "$golden/make_tiny.py" ] || { echo "skip: no model at $model"; exit 77; }
    /usr/bin/python3 "$golden/make_tiny.py" "$golden/configs/tiny-a.json" "$model"
    touch "$model/.complete"
}

# cluster_have UCX|MPI BUILD_DIR: whether the build was configured with it
cluster_have() {
    grep -q "#define DSR1_HAVE_$1 1" "$2/dsr1_build_config.h" 2>/dev/null
}

# cluster_mpi_wrapper OUT DSR1 WORKER N: write OUT, a stand-in for DSR1 that runs
# `DSR1 ARGS...` under mpirun as rank 0 with N dsr1-worker ranks given the same model
# (and --dummy-weights/--seed/--layers when ARGS have them). Bounded by a timeout.
cluster_mpi_wrapper() {
    local out=$1 dsr1=$2 worker=$3 n=$4
    cat >"$out" <<EOF
#!/usr/bin/env bash
wargs=()
prev=
for a in "\$@"; do
    case "\$prev" in --model|--seed|--layers) wargs+=("\$prev" "\$a") ;; esac
    [ "\$a" = --dummy-weights ] && wargs+=(--dummy-weights)
    prev=\$a
done
exec timeout -k 5 \${DSR1_MPI_TIMEOUT:-120} mpirun --oversubscribe --bind-to none \\
    -x UCX_TLS -x UCX_NET_DEVICES -x DSR1_LOG \\
    -np 1 "$dsr1" "\$@" : -np $n "$worker" "\${wargs[@]}"
EOF
    chmod +x "$out"
}
