"""Replica VMs: a VM may be the replica of another (its disks count for images in use; the list
of an image's VMs leaves it out).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('vms') as batch:
        batch.add_column(sa.Column('replica_of', sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('vms') as batch:
        batch.drop_column('replica_of')
