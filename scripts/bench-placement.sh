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
# Needs root (`sudo -E` keeps the BENCH_* variables) to change the affinity of the running
# RabbitMQ and PostgreSQL, found by their listening ports (AMQP 5672, PostgreSQL 5432).
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
last=${online##*[-,]}
if [[ $online != 0-* ]] || ((last < 1)); then
    echo "error: placing the broker needs CPUs 0 and 1 online, this machine has $online" >&2
    exit 1
fi
rest=1
if ((last > 1)); then
    rest="1-$last"
fi

listener() {
    ss -Hltnp "sport = :$1" | { grep -o 'pid=[0-9]*' || true; } | head -1 | cut -d= -f2
}

broker=$(listener 5672)
database=$(listener 5432)
if [[ -z $broker ]]; then
    echo "error: no process found listening on port 5672 (RabbitMQ; run as root to see it)" >&2
    exit 1
fi

# Every thread of every process given, with the CPUs it may use now: "tid:cpus" each.
saved=()
save() {
    local pid task
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do
            saved+=("${task##*/}:$(taskset -pc "${task##*/}" | awk -F': ' '{print $2}')")
        done
    done
}

restore() {
    local entry
    for entry in ${saved[@]+"${saved[@]}"}; do
        taskset -pc "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
    done
}
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

save "$broker"
if [[ $placement == unbound ]]; then
    taskset -apc "$online" "$broker" >/dev/null
    echo "RabbitMQ (pid $broker): every thread free to run on CPUs $online" >&2
    command=(cargo bench --bench ingest "$@")
else
    taskset -apc 0 "$broker" >/dev/null
    where="RabbitMQ (pid $broker) on CPU 0"
    if [[ -n $database ]]; then
        # The postmaster and its backends; new backends inherit the postmaster's CPUs.
        mapfile -t postgres < <(echo "$database"; pgrep -P "$database" || true)
        save "${postgres[@]}"
        for pid in "${postgres[@]}"; do
            taskset -apc "$rest" "$pid" >/dev/null
        done
        where+="; PostgreSQL (pid $database) and the benchmark on CPUs $rest"
    else
        echo "warning: nothing listens on port 5432: PostgreSQL left where it is" >&2
        where+="; the benchmark on CPUs $rest"
    fi
    echo "$where" >&2
    command=(taskset -c "$rest" cargo bench --bench ingest "$@")
fi
# In the background, so that a signal reaches the trap at once; the trap passes it on as SIGTERM,
# on which the benchmark deletes what it created.
"${command[@]}" &
bench=$!
stop() {
    pkill -TERM -P "$bench" || true # the benchmark itself, under cargo
    kill -TERM "$bench" 2>/dev/null || true
    wait "$bench" || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
wait "$bench"
