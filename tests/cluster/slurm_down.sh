#!/usr/bin/env bash
# Stops the private Slurm that slurm_up.sh DIR started: slurmd, slurmctld and munged, each
# by the pid in its pid file under DIR (SIGTERM, then SIGKILL after 10 s). slurmd and
# slurmctld go together once the job steps have ended (10 s at most; a slurmstepd still
# there after them is killed), munged last. Leaves DIR (the caller removes it). Safe to
# run when nothing runs.
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
    for p in "${left[@]}"; do
        echo "slurm_down: $(cat /proc/"$p"/comm 2>/dev/null) ($p) ignored SIGTERM: SIGKILL" >&2
    done
    kill -KILL "${left[@]}" 2>/dev/null
}
# stepds: the slurmstepd processes of this Slurm (they hold its slurmd log under DIR open)
stepds() {
    local p f
    for p in $(pgrep -x slurmstepd || true); do
        for f in /proc/"$p"/fd/*; do
            case "$(readlink "$f" 2>/dev/null)" in "$dir"/*) echo "$p"; break ;; esac
        done
    done
}
# steps still ending (a job just cancelled): give them 10 s, with slurmd still there
for _ in $(seq 50); do
    [ -z "$(stepds)" ] && break
    sleep 0.2
done
daemons=()
for f in "$dir"/slurmd-*.pid; do daemons+=("$(pid "$f" slurmd)"); done
daemons+=("$(pid "$dir/slurmctld.pid" slurmctld)")
read -r -a daemons <<<"${daemons[*]}" # without the empty ones
stop "${daemons[@]}" # the Slurm daemons together, then munged (they authenticate to the end)
read -r -a daemons <<<"$(stepds)" # left without their slurmd: nothing else ends them
if [ ${#daemons[@]} -gt 0 ]; then
    echo "slurm_down: slurmstepd ${daemons[*]} still there: SIGKILL" >&2
    kill -KILL "${daemons[@]}" 2>/dev/null
fi
read -r -a daemons <<<"$(pid "$dir/munge/munged.pid" munged)"
stop "${daemons[@]}"
exit 0
