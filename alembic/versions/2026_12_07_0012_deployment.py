"""The deployment's shared settings (image store identity, image server URL, topology prefix,
queue limits): recorded once, checked by every process as it starts.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'deployment',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=1024), nullable=False),
        sa.Column('recorded_by', sa.String(length=255), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_deployment')),
    )


def downgrade() -> None:
    op.drop_table('deployment')
