"""Indexes for paged and filtered image lists: every list order with the unique name as its last
key (a keyset page starts at an index position instead of sorting the table), and the selective
filters (owner, bound datacenter, status) in name order. ``ix_rm_images_created`` is replaced by
``ix_rm_images_created_name``, which serves everything it served.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_rm_images_created_name', 'rm_images', ['created', 'name'], unique=False)
    op.create_index('ix_rm_images_created_name_desc', 'rm_images', ['created', sa.literal_column('name').desc()], unique=False)
    op.create_index('ix_rm_images_owner_name', 'rm_images', ['owner', 'name'], unique=False)
    op.create_index('ix_rm_images_dc_bound_name', 'rm_images', ['dc_bound', 'name'], unique=False)
    op.create_index('ix_rm_images_status_name', 'rm_images', ['status', 'name'], unique=False)
    op.drop_index('ix_rm_images_created', table_name='rm_images')


def downgrade() -> None:
    op.create_index('ix_rm_images_created', 'rm_images', ['created'], unique=False)
    op.drop_index('ix_rm_images_status_name', table_name='rm_images')
    op.drop_index('ix_rm_images_dc_bound_name', table_name='rm_images')
    op.drop_index('ix_rm_images_owner_name', table_name='rm_images')
    op.drop_index('ix_rm_images_created_name_desc', table_name='rm_images')
    op.drop_index('ix_rm_images_created_name', table_name='rm_images')
