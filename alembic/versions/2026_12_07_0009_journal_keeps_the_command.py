"""The command journal keeps each command as it was published (routing key and envelope), so
``imagesvc serve`` can publish again, at start-up, the accepted commands its in-memory broker lost.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the rows journaled before have neither (start-up recovery fails their tasks).
    with op.batch_alter_table('submitted_commands') as batch:
        batch.add_column(sa.Column('routing_key', sa.String(length=320), nullable=True))
        batch.add_column(sa.Column('body', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('submitted_commands') as batch:
        batch.drop_column('body')
        batch.drop_column('routing_key')
