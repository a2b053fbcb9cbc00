"""The imagesvc services: each a thin wiring module plus its handlers.

A service never imports another service. Entry points translate (HTTP, AMQP), handlers decide,
and ``imagesvc.bootstrap`` is the one place that wires them to infrastructure.
"""
