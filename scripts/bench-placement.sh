#!/usr/bin/env bash
# Runs the ingest benchmark with the broker placed as docs/deployment.md recommends when RabbitMQ
# shares the machine, then puts every thread of the servers back on the CPUs it had (RabbitMQ
# binds its schedulers one per CPU by default).
#
#   scripts/bench-placement.sh isolated   # RabbitMQ on CPU 0; PostgreSQL, the benchmark and
#                                         # the services it spawns on the other CPUs
#   scripts/bench-placement.sh unbound    # RabbitMQ's scheduler threads free to run on every
#                                         # CPU, as with RABBITMQ_SCHEDULER_BIND_TYPE=u
#   BENCH_EVENTS=400000 BENCH_ROUNDS=8 scripts/bench-placement.sh isolated
#
# Needs root (`sudo -E` keeps the BENCH_* variables) to change the affinity of the RabbitMQ and
# PostgreSQL running on this machine (not in containers), found by their listening ports (AMQP
# 5672, PostgreSQL 5432).
set -euo pipefail

placement=${1:-}
case $placement in
isolated | unbound) shift ;;
*)
    echo "usage: $0 isolated|unbound" >&2
    exit 2
    ;;
esac

online=$(cat /sys/devices/system/cpu/online)
if [[ $online != 0-[1-9]* ]]; then # "0-1", "0-3", "0-1,5"; not "0" or "0,2-3"
    echo "error: placing the broker needs CPUs 0 and 1 online, this machine has $online" >&2
    exit 1
fi
rest=${online/#0-/1-} # "0-3" -> "1-3", "0-1,5" -> "1-1,5"

listener() {
    ss -Hltnp "sport = :$1" | { grep -o 'pid=[0-9]*' || true; } | head -1 | cut -d= -f2
}

broker=$(listener 5672)
database=$(listener 5432)
if [[ -z $broker ]]; then
    echo "error: no process found listening on port 5672 (RabbitMQ; run as root to see it)" >&2
    exit 1
fi

# Every thread of every process given, with the CPUs it may use now: "tid:cpus" each. A thread
# that ends meanwhile is skipped.
shopt -s nullglob
saved=()
save() {
    local pid task cpus
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do
            cpus=$(taskset -pc "${task##*/}" 2>/dev/null | awk -F': ' '{print $2}') || continue
            if [[ -n $cpus ]]; then
                saved+=("${task##*/}:$cpus")
            fi
        done
    done
}

restore() {
    local entry
    for entry in ${saved[@]+"${saved[@]}"}; do
        taskset -pc "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
    done
}
# On Ctrl-C or SIGTERM: SIGTERM to the benchmark (under cargo, or cargo itself while it still
# builds), on which it deletes what it created; then wait for it before restoring.
bench=
stop() {
    [[ -n $bench ]] || return 0
    pkill -TERM -P "$bench" || kill -TERM "$bench" 2>/dev/null || true
    wait "$bench" || true
}
trap restore EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

save "$broker"
if [[ $placement == unbound ]]; then
    taskset -apc "$online" "$broker" >/dev/null
    echo "RabbitMQ (pid $broker): every thread free to run on CPUs $online" >&2
    run=(cargo bench --bench ingest "$@")
else
    taskset -apc 0 "$broker" >/dev/null
    where="RabbitMQ (pid $broker) on CPU 0"
    if [[ -n $database ]]; then
        # The postmaster and its backends; new backends inherit the postmaster's CPUs (those
        # forked meanwhile keep them until they exit: the benchmark's close with it).
        mapfile -t postgres < <(echo "$database"; pgrep -P "$database" || true)
        save "${postgres[@]}"
        for pid in "${postgres[@]}"; do
            taskset -apc "$rest" "$pid" >/dev/null 2>&1 || true
        done
        where+="; PostgreSQL (pid $database) and the benchmark on CPUs $rest"
    else
        echo "warning: nothing listens on port 5432: PostgreSQL left where it is" >&2
        where+="; the benchmark on CPUs $rest"
    fi
    echo "$where" >&2
    run=(taskset -c "$rest" cargo bench --bench ingest "$@")
fi
# In the background, so that a signal reaches the traps at once.
"${run[@]}" &
bench=$!
wait "$bench"
