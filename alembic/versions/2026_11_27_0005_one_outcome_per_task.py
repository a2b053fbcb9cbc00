"""A task ends once: at most one terminal task event per task id (correlation id).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_TERMINAL = sa.text("type IN ('task.failed', 'task.succeeded')")


def upgrade() -> None:
    op.create_index('uq_events_task_outcome', 'events', ['correlation_id'], unique=True,
                    sqlite_where=_TERMINAL, postgresql_where=_TERMINAL)


def downgrade() -> None:
    op.drop_index('uq_events_task_outcome', table_name='events', sqlite_where=_TERMINAL, postgresql_where=_TERMINAL)
