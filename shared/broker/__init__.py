"""Broker access: topology, connections, confirmed publishing, the consumer runner.

The only package that imports kombu (pika appears only in tests, as an independent client).
"""
