"""The shipping context: *another* service, owned by another team, in the reference application.

It shares no code with ``ordering``: it knows the ordering service only through the published
language (the JSON Schema exported with ``tidings schema export``), receives the integration
events from the broker (RabbitMQ, NATS or Redis; the in-memory broker in ``make demo``), and
keeps its own database. Every message is verified (signature), decoded with its *own* classes,
and handled exactly once in effect (inbox record in the same transaction as its effects).

Run it with ``tidings worker --app shipping_context.service:worker`` (configured by environment:
``SHIPPING_DB_URL``, ``SHIPPING_BUS_URL`` (``SHIPPING_AMQP_URL`` is still read), and
``SHIPPING_SIGNING_KEY`` as hex).
"""
