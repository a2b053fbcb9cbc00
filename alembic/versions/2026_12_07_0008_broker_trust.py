"""Broker trust: who published each event, and which command each task id belongs to.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('published_by', sa.String(length=150), nullable=True))
    op.create_table('task_owners',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('actor', sa.String(length=150), nullable=True),
    sa.Column('command', sa.String(length=64), nullable=False),
    sa.Column('bound_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_task_owners'))
    )
    # The tasks that exist already belong to the command whose handling stored their events.
    op.execute(
        "INSERT INTO task_owners (task_id, message_id, actor, command, bound_at) "
        "SELECT correlation_id, MIN(causation_id), NULL, '', MIN(created_at) FROM events "
        "WHERE causation_id IS NOT NULL GROUP BY correlation_id"
    )


def downgrade() -> None:
    op.drop_table('task_owners')
    with op.batch_alter_table('events') as batch:
        batch.drop_column('published_by')
