#!/usr/bin/env bash
# Readies the brokers that `postbox-bench` compares Postbox with, where they
# are installed: NATS with JetStream (127.0.0.1:4222), Redis (127.0.0.1:6379)
# and RabbitMQ with its stream protocol (127.0.0.1:5552). Nothing is
# installed: a broker that is missing or stopped is reported, and the load tool
# then reports it as "not measured" with the reason.
#
# RabbitMQ's stream protocol is a plugin, off by default: when RabbitMQ runs
# and port 5552 does not answer, this enables `rabbitmq_stream` and waits for it.
set -uo pipefail

READY_WAIT_S=30

answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

report() {
    if answers "$2"; then
        echo "peers: $1 answers on 127.0.0.1:$2"
    else
        echo "peers: $1 does not answer on 127.0.0.1:$2; postbox-bench will report it as not measured" >&2
    fi
}

if answers 5672 && ! answers 5552 && command -v rabbitmq-plugins >/dev/null; then
    echo "peers: enabling RabbitMQ's stream plugin (rabbitmq_stream)"
    if [ "$(id -u)" -eq 0 ]; then
        rabbitmq-plugins enable rabbitmq_stream >/dev/null
    else
        sudo rabbitmq-plugins enable rabbitmq_stream >/dev/null
    fi
    for _ in $(seq "$READY_WAIT_S"); do
        answers 5552 && break
        sleep 1
    done
fi

report "NATS" 4222
report "Redis" 6379
report "RabbitMQ Streams" 5552
exit 0
