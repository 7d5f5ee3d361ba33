#!/bin/sh
# RabbitMQ of the compose stack with two users of its own (docs/deployment.md, RabbitMQ users
# and permissions): `pulseboard`, the service's, on the events exchange and the `pulseboard.`
# names; `producer`, for the producers, which may only publish to the events exchange — so no
# producer can speak on `pulseboard.live`, where the instances talk to each other.
# The image's entrypoint starts the broker; once it is up, the users and their permissions are
# set again at every start (idempotent: a changed password in .env takes effect on restart).
set -eu

. "$(dirname "$0")/permissions.sh"

ready=/tmp/pulseboard-users-ready
rm -f "$ready"
docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'kill -TERM "$server"; wait "$server"' TERM INT

rabbitmqctl await_startup --timeout 120
user() {
  name=$1 password=$2
  rabbitmqctl add_user "$name" "$password" >/dev/null 2>&1 \
    || rabbitmqctl change_password "$name" "$password" >/dev/null
}
user pulseboard "$RABBITMQ_PASSWORD"
rabbitmqctl set_user_tags pulseboard administrator
rabbitmqctl set_permissions -p / pulseboard "$service_configure" "$service_write" "$service_read"
user producer "$RABBITMQ_PRODUCER_PASSWORD"
rabbitmqctl set_user_tags producer
rabbitmqctl set_permissions -p / producer "$producer_configure" "$producer_write" "$producer_read"
touch "$ready"

wait "$server"
