#!/usr/bin/env bash
# Stops the private Slurm that slurm_up.sh DIR started: slurmd, slurmctld and munged, each
# by the pid in its pid file under DIR (SIGTERM, then SIGKILL after 10 s; slurmd and
# slurmctld together, munged after them). Leaves DIR (the
# caller removes it). Safe to run when nothing runs.
#
# usage: slurm_down.sh DIR
set -uo pipefail
dir=$(realpath -m "${1:?usage: slurm_down.sh DIR}")
# pid PIDFILE NAME: the pid in PIDFILE, if that process is still NAME
pid() {
    local p
    p=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && echo "$p"
    return 0
}
# stop PID...: SIGTERM to each, then wait for all (10 s at most) and SIGKILL what is left
stop() {
    local p left
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null
    for _ in $(seq 100); do
        left=()
        for p in "$@"; do if kill -0 "$p" 2>/dev/null; then left+=("$p"); fi; done
        [ ${#left[@]} = 0 ] && return 0
        sleep 0.1
    done
    echo "slurm_down: ${left[*]} ignored SIGTERM: SIGKILL" >&2
    kill -KILL "${left[@]}" 2>/dev/null
}
daemons=()
for f in "$dir"/slurmd-*.pid; do daemons+=("$(pid "$f" slurmd)"); done
daemons+=("$(pid "$dir/slurmctld.pid" slurmctld)")
read -r -a daemons <<<"${daemons[*]}" # without the empty ones
stop "${daemons[@]}" # the Slurm daemons together, then munged (they authenticate to the end)
read -r -a daemons <<<"$(pid "$dir/munge/munged.pid" munged)"
stop "${daemons[@]}"
exit 0
