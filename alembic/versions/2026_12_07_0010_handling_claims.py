"""The inbox for concurrent copies: which delivery of a command is handling it now.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('task_owners') as batch:
        batch.add_column(sa.Column('claim', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('claim_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('claims', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('lapses', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('task_owners') as batch:
        batch.drop_column('lapses')
        batch.drop_column('claims')
        batch.drop_column('claim_expires_at')
        batch.drop_column('claim')
