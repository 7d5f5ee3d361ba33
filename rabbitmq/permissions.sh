# The RabbitMQ permissions of docs/deployment.md (RabbitMQ users and permissions), as regexes
# over resource names for `rabbitmqctl set_permissions USER CONFIGURE WRITE READ`. Sourced by
# entrypoint.sh (the compose stack) and by tests/api/deployment.rs, which runs the service and a
# producer on a broker with exactly these.
#
# PULSEBOARD_EXCHANGE and PULSEBOARD_QUEUE_PREFIX as the instances have them (their defaults).
exchange=${PULSEBOARD_EXCHANGE:-events}
prefix=${PULSEBOARD_QUEUE_PREFIX:-pulseboard}

# The service: the events exchange, its own `<prefix>.` queues and exchanges (`<prefix>.live`
# among them), the server-named `amq.gen-…` queue each instance declares for the messages of
# the others, and (write only) the default exchange `amq.default` (console answers, dead-letter
# replay).
service_configure="^(${exchange}|${prefix}\\..*|amq\\.gen-.*)\$"
service_write="^(${exchange}|${prefix}\\..*|amq\\.gen-.*|amq\\.default)\$"
service_read="^(${exchange}|${prefix}\\..*|amq\\.gen-.*)\$"

# Producers: publish to the events exchange, nothing else (they declare nothing, read nothing).
producer_configure='^$'
producer_write="^${exchange}\$"
producer_read='^$'
