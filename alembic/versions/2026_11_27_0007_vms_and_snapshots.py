"""VMs and their disk snapshots: other systems' facts, for images in use and snapshot images.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_LIVE = sa.text("status <> ''")


def upgrade() -> None:
    op.create_table('vms',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('dc', sa.String(length=16), nullable=False),
    sa.Column('node', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('ostype', sa.SmallInteger(), nullable=False),
    sa.Column('disks', sa.JSON(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('uuid', name=op.f('pk_vms'))
    )
    op.create_index('uq_vms_live_hostname', 'vms', ['hostname'], unique=True, sqlite_where=_LIVE,
                    postgresql_where=_LIVE)
    op.create_index('ix_vms_dc', 'vms', ['dc'], unique=False)
    op.create_table('vm_snapshots',
    sa.Column('vm_uuid', sa.String(length=36), nullable=False),
    sa.Column('disk_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('vm_uuid', 'disk_id', 'name', name=op.f('pk_vm_snapshots'))
    )


def downgrade() -> None:
    op.drop_table('vm_snapshots')
    op.drop_index('ix_vms_dc', table_name='vms')
    op.drop_index('uq_vms_live_hostname', table_name='vms')
    op.drop_table('vms')
