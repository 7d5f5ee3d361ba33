#!/usr/bin/env bash
# Runs every check and test of pulseboard: the one command for developers and CI.
#
#   scripts/test.sh
#
# On a fresh Debian 12 machine (root, apt-get reachable, rustup toolchain with cargo) it first
# makes sure the services the tests talk to are installed and running, then runs, in order:
# npm ci (uPlot, which the binary embeds, from package-lock.json), cargo fmt --check, cargo clippy (warnings are errors), the doc tests, then the tests with
# cargo-nextest when it is available, or with cargo test otherwise. Every step runs even when an
# earlier one failed, so one run shows every problem; the exit status is non-zero if any failed.
#
# Idempotent: services that already run are left alone, and are never stopped; node_modules/
# already installed from the current package-lock.json is left as it is.
#
# Services the tests expect:
#   - PostgreSQL on 127.0.0.1:5432, user postgres with trust authentication
#     (postgres://postgres@127.0.0.1:5432/postgres; tests CREATE DATABASE per test), and the
#     server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin for private clusters;
#   - RabbitMQ on 127.0.0.1:5672 with guest/guest;
#   - nginx and docker-compose (Debian's; the tests start their own nginx, no daemon is needed);
#   - npm (Debian's, with Node.js), for the front-end packages of package.json;
#   - Chromium and chromedriver; Prometheus, Alertmanager, promtool and amtool (Debian's
#     prometheus and prometheus-alertmanager; the tests start their own, no daemon is needed).
#
# Environment: CI defaults to true so that no test skips for a missing service.
# PULSEBOARD_TEST_RUNNER=nextest|cargo-test forces a test runner (default: nextest if available).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CI="${CI:-true}"
export DEBIAN_FRONTEND=noninteractive

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
RABBIT_WAIT_SECS=60
PG_WAIT_SECS=30

section() {
    printf '\n==== %s ====\n' "$*"
}

note() {
    printf 'test.sh: %s\n' "$*"
}

die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [[ "$APT_UPDATED" == 0 ]]; then
        note "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    note "apt-get install -y $*"
    apt-get install -y -qq "$@"
}

tcp_open() { # host port
    timeout 2 bash -c "</dev/tcp/$1/$2" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

pg_bin_dir() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && printf '%s\n' "$dir"
}

# "VERSION NAME" of the cluster on $PG_PORT, else of the newest cluster; empty when there is none.
pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local on_port newest
    on_port="$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }' || true)"
    if [[ -n "$on_port" ]]; then
        printf '%s\n' "$on_port"
        return 0
    fi
    newest="$(pg_lsclusters -h 2>/dev/null | sort -V | tail -n 1 | awk '{ print $1, $2 }' || true)"
    [[ -n "$newest" ]] && printf '%s\n' "$newest"
    return 0
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

pg_trusts_postgres() {
    PGPASSWORD='' psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' \
        >/dev/null 2>&1
}

pg_wait() {
    local waited=0
    until pg_ready; do
        ((waited >= PG_WAIT_SECS)) && return 1
        sleep 1
        waited=$((waited + 1))
    done
}

# Puts trust rules for loopback TCP first in pg_hba.conf (the first matching rule wins).
pg_configure_trust() { # version name
    local hba="/etc/postgresql/$1/$2/pg_hba.conf"
    [[ -f "$hba" ]] || die "no $hba to configure"
    if ! grep -q '# pulseboard scripts/test.sh' "$hba"; then
        note "configuring trust authentication for 127.0.0.1 and ::1 in $hba"
        local tmp
        tmp="$(mktemp)"
        {
            echo '# pulseboard scripts/test.sh: trust local TCP connections (test machine only)'
            echo 'host    all    all    127.0.0.1/32    trust'
            echo 'host    all    all    ::1/128         trust'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
}

ensure_postgres() {
    section "PostgreSQL on $PG_HOST:$PG_PORT"
    if ! command -v pg_isready >/dev/null 2>&1 || [[ -z "$(pg_bin_dir)" ]]; then
        apt_install postgresql
    fi
    local bin
    bin="$(pg_bin_dir)" || die "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql"
    note "server binaries: $bin"

    if ! pg_ready; then
        local cluster
        cluster="$(pg_cluster)"
        if [[ -z "$cluster" ]]; then
            local version
            version="$(basename "$(dirname "$bin")")"
            note "creating cluster $version/main on port $PG_PORT"
            pg_createcluster --port "$PG_PORT" "$version" main
            cluster="$version main"
        fi
        # shellcheck disable=SC2086 # "VERSION NAME" splits into two arguments on purpose
        pg_configure_trust $cluster
        note "starting cluster $cluster"
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $cluster start ||
            note "pg_ctlcluster start reported an error; waiting for the server anyway"
        pg_wait || die "PostgreSQL does not accept connections on $PG_HOST:$PG_PORT after ${PG_WAIT_SECS}s"
    fi

    if ! pg_trusts_postgres; then
        local cluster
        cluster="$(pg_cluster)"
        [[ -n "$cluster" ]] || die "PostgreSQL answers on $PG_PORT but no local cluster to configure"
        # shellcheck disable=SC2086
        pg_configure_trust $cluster
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $cluster reload
        sleep 1
        pg_trusts_postgres ||
            die "cannot connect as postgres://postgres@$PG_HOST:$PG_PORT/postgres without a password"
    fi
    note "PostgreSQL ready: postgres://postgres@$PG_HOST:$PG_PORT/postgres"
    # Tests that start private throwaway clusters find initdb and pg_ctl here.
    case ":$PATH:" in
        *":$bin:"*) ;;
        *) export PATH="$PATH:$bin" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------------------------

rabbit_wait() {
    local waited=0
    until tcp_open "$AMQP_HOST" "$AMQP_PORT" && rabbitmq-diagnostics -q ping >/dev/null 2>&1; do
        ((waited >= RABBIT_WAIT_SECS)) && return 1
        sleep 2
        waited=$((waited + 2))
    done
}

# Succeeds when guest/guest can log in, creating or repairing the user first if needed.
rabbit_guest_ready() {
    rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1 && return 0
    note "user guest/guest missing or with another password: setting it up"
    rabbitmqctl -q add_user guest guest >/dev/null 2>&1 ||
        rabbitmqctl -q change_password guest guest || return 1
    rabbitmqctl -q set_user_tags guest administrator || return 1
    rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' || return 1
    rabbitmqctl -q authenticate_user guest guest >/dev/null
}

ensure_rabbitmq() {
    section "RabbitMQ on $AMQP_HOST:$AMQP_PORT"
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
    fi
    if ! tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
        # A node that is up but not listening yet is still booting: give it time first.
        if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
            note "starting rabbitmq-server -detached"
            rabbitmq-server -detached || note "rabbitmq-server -detached reported an error; waiting anyway"
        fi
        note "waiting up to ${RABBIT_WAIT_SECS}s for RabbitMQ"
        rabbit_wait || die "RabbitMQ does not answer on $AMQP_HOST:$AMQP_PORT after ${RABBIT_WAIT_SECS}s"
    fi
    if ! rabbit_guest_ready; then
        # A node that cannot even manage its users has a broken internal database (seen after the
        # disk filled up: mnesia's counters were gone); a restart brings it back with its data.
        note "RabbitMQ cannot set up guest/guest: restarting the node once"
        rabbitmqctl -q stop >/dev/null 2>&1 || note "rabbitmqctl stop reported an error"
        rabbitmq-server -detached || note "rabbitmq-server -detached reported an error; waiting anyway"
        rabbit_wait || die "RabbitMQ does not answer on $AMQP_HOST:$AMQP_PORT after a restart"
        rabbit_guest_ready || die "RabbitMQ refuses guest/guest even after a restart"
    fi
    note "RabbitMQ ready: amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f"
}

# ---------------------------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------------------------
# The browser tests drive Debian's Chromium through its WebDriver (chromium-driver).
ensure_chromium() {
    section "Chromium"
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        note "chromium present: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
        return
    fi
    apt_install chromium chromium-driver
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || die "chromium or chromedriver missing after install"
}

# ---------------------------------------------------------------------------------------------
# Prometheus and Alertmanager
# ---------------------------------------------------------------------------------------------
# The observability tests start Debian's Prometheus and Alertmanager of their own (never as
# daemons: the packages' services are stopped right after install) and run promtool and amtool.
ensure_prometheus() {
    section "Prometheus and Alertmanager"
    local tool missing=()
    for tool in prometheus promtool prometheus-alertmanager amtool; do
        [[ -x "/usr/bin/$tool" ]] || missing+=("$tool")
    done
    if ((${#missing[@]} == 0)); then
        note "present: $(/usr/bin/prometheus --version 2>&1 | head -n 1); $(/usr/bin/prometheus-alertmanager --version 2>&1 | head -n 1)"
        return
    fi
    note "missing: ${missing[*]}"
    apt_install prometheus prometheus-alertmanager
    # The packages start their daemons on 9090/9093 where a service manager runs; the tests
    # need neither, and a daemon would only take the ports and the CPU.
    local daemon
    for daemon in prometheus prometheus-alertmanager prometheus-node-exporter; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
            systemctl stop "$daemon" 2>/dev/null || true
        elif [[ -x "/etc/init.d/$daemon" ]]; then
            "/etc/init.d/$daemon" stop >/dev/null 2>&1 || true
        fi
    done
    for tool in prometheus promtool prometheus-alertmanager amtool; do
        [[ -x "/usr/bin/$tool" ]] || die "/usr/bin/$tool missing after install"
    done
}

# ---------------------------------------------------------------------------------------------
# nginx and docker-compose
# ---------------------------------------------------------------------------------------------
# The proxy tests run Debian's nginx as a process of their own (own configuration, pid, logs
# and temp folders, loopback ports); the deployment tests run `docker-compose config` (no
# container engine needed). The package's nginx daemon, which its postinst starts on port 80
# where a service manager runs, is stopped: the tests never use it.
ensure_proxy_tools() {
    section "nginx and docker-compose"
    local missing=()
    [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
        if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
            systemctl disable --now nginx 2>/dev/null || true
        elif [[ -x /etc/init.d/nginx ]]; then
            /etc/init.d/nginx stop >/dev/null 2>&1 || true
        fi
    fi
    [[ -x /usr/sbin/nginx ]] || die "/usr/sbin/nginx missing after install"
    command -v docker-compose >/dev/null 2>&1 || die "docker-compose missing after install"
    note "present: $(/usr/sbin/nginx -v 2>&1); $(docker-compose version --short 2>/dev/null)"
}

# ---------------------------------------------------------------------------------------------
# npm
# ---------------------------------------------------------------------------------------------
# The binary embeds uPlot from node_modules/ (src/http/assets.rs); build.rs stops the build
# when it is missing.
ensure_npm() {
    section "npm"
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    command -v npm >/dev/null 2>&1 || die "npm missing after install"
    note "present: node $(node --version 2>/dev/null), npm $(npm --version 2>/dev/null)"
}

# A copy of the lockfile node_modules/ was installed from. npm ci deletes node_modules/ first, so
# the copy goes with it.
NPM_STAMP=node_modules/.installed-from-package-lock.json

# npm ci rewrites every file it installs, and the new modification times would make cargo
# rebuild the crate and every test binary: it is skipped when node_modules/ already holds what
# this package-lock.json names.
npm_install() {
    if cmp -s package-lock.json "$NPM_STAMP" && npm ls --silent >/dev/null 2>&1; then
        note "node_modules/ is installed from this package-lock.json: nothing to do"
        return 0
    fi
    npm ci --ignore-scripts --no-audit --no-fund && cp package-lock.json "$NPM_STAMP"
}

# ---------------------------------------------------------------------------------------------
# Rust checks and tests
# ---------------------------------------------------------------------------------------------

raise_file_limit() {
    section "Limits"
    if [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < 20000)); then
        ulimit -n 20000 2>/dev/null || note "cannot raise the open-file limit to 20000 (hard limit $(ulimit -Hn))"
    fi
    note "open files: $(ulimit -n)"
}

have_nextest() {
    cargo nextest --version >/dev/null 2>&1
}

ensure_nextest() {
    have_nextest && return 0
    note "cargo-nextest missing: trying cargo install cargo-nextest --locked"
    if cargo install cargo-nextest --locked; then
        have_nextest
    else
        note "cargo-nextest could not be installed; falling back to cargo test"
        return 1
    fi
}

FAILED=()
PASSED=()

step() { # name command...
    local name="$1"
    shift
    section "$name: $*"
    local started=$SECONDS
    if "$@"; then
        PASSED+=("$name")
        note "$name passed in $((SECONDS - started))s"
    else
        local status=$?
        FAILED+=("$name")
        note "$name FAILED (exit status $status) after $((SECONDS - started))s"
    fi
}

no_test_password_in_service_logs() {
    if grep -rlE 'pw-[0-9a-f]{32}' target/tmp/service-logs 2>/dev/null; then
        note "a test password appears in the service logs listed above"
        return 1
    fi
    note "no test password in $(find target/tmp/service-logs -type f 2>/dev/null | wc -l) service logs"
}

main() {
    section "pulseboard tests (CI=$CI)"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup)"
    cargo --version

    ensure_postgres
    ensure_rabbitmq
    ensure_chromium
    ensure_prometheus
    ensure_proxy_tools
    ensure_npm
    raise_file_limit

    section "Tools"
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy missing: rustup component add clippy"
    local runner=test
    case "${PULSEBOARD_TEST_RUNNER:-auto}" in
        auto) ensure_nextest && runner=nextest ;;
        nextest)
            ensure_nextest || die "PULSEBOARD_TEST_RUNNER=nextest but cargo-nextest is unavailable"
            runner=nextest
            ;;
        cargo-test) ;;
        *) die "PULSEBOARD_TEST_RUNNER must be nextest or cargo-test, not '$PULSEBOARD_TEST_RUNNER'" ;;
    esac
    if [[ "$runner" == nextest ]]; then
        cargo nextest --version | sed -n 1p
    fi
    note "test runner: cargo $runner"

    # Before anything builds: the build embeds what npm installs.
    step npm npm_install
    step fmt cargo fmt --check
    step clippy cargo clippy --all-targets -- -D warnings
    # Doc tests run first (nextest does not run them), so that the last test summary printed is
    # the one of the whole suite: a doc-test run may well count 0 tests.
    step doctests cargo test --doc
    # Service logs of this run only, for the leak check below.
    rm -rf target/tmp/service-logs
    if [[ "$runner" == nextest ]]; then
        step tests cargo nextest run --no-fail-fast
    else
        step tests cargo test --no-fail-fast --lib --bins --tests
    fi

    # Test passwords all start with "pw-": none may appear in any service log of the run.
    step log-hygiene no_test_password_in_service_logs

    section "Summary"
    note "passed: ${PASSED[*]:-none}"
    if ((${#FAILED[@]} > 0)); then
        note "FAILED: ${FAILED[*]}"
        exit 1
    fi
    note "every step passed"
}

main "$@"
