#!/usr/bin/env bash
# Leader memory under sustained user activity: one pulseboard (SQLite), `simulate` at RATE
# events/s (simulate's mix: 55 % user.active, 10 % user.signed_out, 5 % of an unknown type,
# 30 % orders and refunds) for SECS seconds; the service's VmRSS every 30 s, and its CPU
# seconds (user + system) at the end.
# usage: scripts/leader-memory.sh BINARY LABEL RATE SECS (docs/benchmarks.md, "Leader memory")
# Needs RabbitMQ on 127.0.0.1:5672 and curl; the database is a SQLite file in a temporary folder.
set -euo pipefail
bin=$1 label=$2 rate=$3 secs=$4
dir=$(mktemp -d /tmp/memrun.XXXX)
prefix="mem$RANDOM"
export DATABASE_URL="sqlite://$dir/p.db" AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export PULSEBOARD_QUEUE_PREFIX=$prefix PULSEBOARD_EXCHANGE="ex-$prefix" PULSEBOARD_BIND=127.0.0.1:18777
export PULSEBOARD_ADMIN_PASSWORD=change-me-please-123 RUST_LOG=warn
"$bin" serve > "$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18777/readyz >/dev/null && break; sleep 0.2; done
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' /proc/$pid/stat; }
echo "$label t=0 rss_kib=$(rss)"
"$bin" simulate --rate "$rate" --duration "$secs" --users 5000 > "$dir/sim.log" 2>&1 &
sim=$!
for t in $(seq 30 30 "$secs"); do sleep 30; echo "$label t=$t rss_kib=$(rss)"; done
wait $sim || true
sleep 5
echo "$label end rss_kib=$(rss) cpu_s=$(cpu_secs) $(tail -1 "$dir/sim.log")"
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$dir"
