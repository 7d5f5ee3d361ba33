#!/bin/sh
# Container entrypoint of the compose stack's Alertmanager: renders alertmanager.yml with the
# Telegram bot token and chat id from the environment (Alertmanager 0.25 cannot read them from
# anywhere but its configuration file), then runs Alertmanager on the rendered copy.
#
#   AM_SOURCE        the committed configuration (default /etc/alertmanager/source/alertmanager.yml)
#   AM_RENDERED      where the rendered copy goes (default /tmp/alertmanager.yml; never committed)
#   AM_RENDER_ONLY=1 render and exit (the tests render through this script)
set -eu

source_file="${AM_SOURCE:-/etc/alertmanager/source/alertmanager.yml}"
rendered="${AM_RENDERED:-/tmp/alertmanager.yml}"

fail() {
    echo "alertmanager entrypoint: $*" >&2
    exit 1
}

[ -n "${TELEGRAM_BOT_TOKEN:-}" ] || fail "TELEGRAM_BOT_TOKEN is empty: set it in .env (see .env.example)"
[ -n "${TELEGRAM_CHAT_ID:-}" ] || fail "TELEGRAM_CHAT_ID is empty: set it in .env (see .env.example)"
# A token is digits, a colon and [A-Za-z0-9_-]; a chat id an optionally negative integer. Other
# characters would break out of the sed expressions below.
case "$TELEGRAM_BOT_TOKEN" in
    *[!A-Za-z0-9:_-]*) fail "TELEGRAM_BOT_TOKEN has characters a Telegram bot token never has" ;;
esac
case "$TELEGRAM_CHAT_ID" in
    -*[!0-9]* | [0-9]*[!0-9]* | - | -0 | 0) fail "TELEGRAM_CHAT_ID must be a non-zero integer" ;;
    -[0-9]* | [0-9]*) ;;
    *) fail "TELEGRAM_CHAT_ID must be a non-zero integer" ;;
esac

umask 077
sed -e "s|@TELEGRAM_BOT_TOKEN@|${TELEGRAM_BOT_TOKEN}|" \
    -e "s|^\( *chat_id:\).*# @TELEGRAM_CHAT_ID@.*\$|\1 ${TELEGRAM_CHAT_ID}|" \
    "$source_file" >"$rendered"
grep -q '@TELEGRAM_[A-Z_]*@' "$rendered" && fail "a @TELEGRAM_…@ placeholder of $source_file was left unfilled"

[ "${AM_RENDER_ONLY:-0}" = 1 ] && exit 0
exec /bin/alertmanager --config.file="$rendered" --storage.path=/alertmanager "$@"
