"""Projector: builds the read model from events, idempotently; decides nothing.
"""
