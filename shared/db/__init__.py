"""Database access: models, engines, transactions, the event store/outbox, inbox, locks, catalogue.

Only this package, ``alembic/``, the gateway's ``queries`` module and the projector's handlers
import SQLAlchemy.
"""
