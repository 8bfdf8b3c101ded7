#!/usr/bin/env python3
"""Publish one auth event the way identity-link-worker expects it (README, "Publishing events").

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    AMQP_URL='amqp://auth-service:<password>@rabbitmq:5672/%2f' \\
      .venv/bin/python publish.py --event user.signed_up --anonymous anon-123 --user user-42

Prints one line and exits 0 once the broker has confirmed the event; exits 1 with
one line on standard error otherwise (broker unreachable, refused, or no queue
bound for the routing key), so the caller can publish again with the same
--message-id. Lift `publish_event` into the auth service; the rest is the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timezone

import pika
import pika.exceptions

ROUTING_KEYS = ("user.signed_up", "user.logged_in")


def event_body(event_id: str, anonymous_id: str, user_id: str) -> bytes:
    """The JSON body: the worker finds /anonymousId and /userId with its default pointers."""
    return json.dumps({
        "eventId": event_id,
        # Only for the worker's event-age metric: RFC 3339, UTC.
        "occurredAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "anonymousId": anonymous_id,
        "userId": user_id,
    }).encode("utf-8")


def publish_event(channel, exchange: str, routing_key: str, body: bytes, message_id: str) -> None:
    """Publish and wait for the broker's confirm; raises if it did not take the event.

    The channel must be in confirm mode (channel.confirm_delivery()).
    """
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(
            # Persistent: written to disk by the quorum queue, survives a broker restart.
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            # The event's id: the worker logs it and sends it as X-Request-Id. Keep it
            # when publishing the same event again after a failure.
            message_id=message_id,
        ),
        # Unroutable (no queue bound for this key) is an error, not a silent drop.
        mandatory=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description="Publish one auth event to RabbitMQ, confirmed.")
    ap.add_argument("--event", required=True, help=f"routing key: {' or '.join(ROUTING_KEYS)}")
    ap.add_argument("--anonymous", required=True, help="the visitor's anonymous identifier")
    ap.add_argument("--user", required=True, help="the user identifier")
    ap.add_argument("--message-id", help="the event's id (default: a random UUID)")
    ap.add_argument("--exchange", default=os.environ.get("AUTH_EVENTS_EXCHANGE", "auth.events"),
                    help="the topic exchange (default $AUTH_EVENTS_EXCHANGE or auth.events)")
    args = ap.parse_args()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    message_id = args.message_id or str(uuid.uuid4())
    params = pika.URLParameters(url)
    # Fail instead of hanging when the broker blocks publishers (memory or disk alarm).
    params.blocked_connection_timeout = 30
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as e:
        # Never print the URL: it holds the password.
        print(f"publish: cannot connect to the broker: {e!r}", file=sys.stderr)
        return 1
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        publish_event(channel, args.exchange, args.event,
                      event_body(message_id, args.anonymous, args.user), message_id)
    except pika.exceptions.UnroutableError:
        print(f"publish: unroutable: no queue is bound to exchange {args.exchange!r} for "
              f"{args.event!r} (is the worker's topology declared?)", file=sys.stderr)
        return 1
    except pika.exceptions.NackError:
        print("publish: the broker refused the event (nack)", file=sys.stderr)
        return 1
    except pika.exceptions.AMQPError as e:
        print(f"publish: {e!r}", file=sys.stderr)
        return 1
    finally:
        if connection.is_open:
            connection.close()
    print(f"published {args.event} message_id={message_id} to exchange {args.exchange!r} (confirmed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
