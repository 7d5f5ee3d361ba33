#!/usr/bin/env bash
# Runs the ingest benchmark with the broker on a core of its own, as docs/deployment.md
# recommends when RabbitMQ shares the machine: RabbitMQ on CPU 0; the benchmark, the services
# it spawns and PostgreSQL on the others. Restores the servers' CPU affinity on exit.
#
#   scripts/bench-isolated.sh                      # = cargo bench --bench ingest, isolated
#   BENCH_EVENTS=400000 BENCH_ROUNDS=8 scripts/bench-isolated.sh
#
# Needs root (or the servers' user) to change the affinity of the running RabbitMQ and
# PostgreSQL, found by their listening ports (AMQP 5672, PostgreSQL 5432).
set -euo pipefail

cpus=$(nproc --all)
if ((cpus < 2)); then
    echo "error: isolating the broker needs at least 2 CPUs, this machine has $cpus" >&2
    exit 1
fi
rest=1
if ((cpus > 2)); then
    rest="1-$((cpus - 1))"
fi

listener() {
    ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}

broker=$(listener 5672)
database=$(listener 5432)
if [[ -z $broker ]]; then
    echo "error: no process listens on port 5672 (RabbitMQ)" >&2
    exit 1
fi

# Every process of a server: PostgreSQL's postmaster forks its backends, which inherit its mask.
processes() {
    [[ -n $1 ]] && { echo "$1"; pgrep -P "$1" || true; }
}

saved=()
pin() {
    local cpu_list=$1 pid
    shift
    for pid in "$@"; do
        saved+=("$pid:$(taskset -pc "$pid" | awk -F': ' '{print $2}')")
        taskset -apc "$cpu_list" "$pid" >/dev/null
    done
}

restore() {
    local entry
    for entry in "${saved[@]}"; do
        taskset -apc "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
    done
}
trap restore EXIT
trap 'exit 130' INT TERM

pin 0 "$broker"
# shellcheck disable=SC2046 # one pid per word
pin "$rest" $(processes "$database")
echo "RabbitMQ (pid $broker) on CPU 0; PostgreSQL and the benchmark on CPUs $rest" >&2
taskset -c "$rest" cargo bench --bench ingest "$@"
