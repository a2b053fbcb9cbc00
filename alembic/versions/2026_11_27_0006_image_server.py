"""The image server: compute nodes, remote repositories' lists, a running task's progress.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nodes',
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('uuid', sa.String(length=36), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=True),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hostname', name=op.f('pk_nodes'))
    )
    op.create_table('image_repositories',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('url', sa.String(length=1024), nullable=False),
    sa.Column('last_update', sa.DateTime(timezone=True), nullable=True),
    sa.Column('image_count', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('images', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_image_repositories'))
    )
    with op.batch_alter_table('rm_tasks') as batch:
        batch.add_column(sa.Column('progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rm_tasks') as batch:
        batch.drop_column('progress')
    op.drop_table('image_repositories')
    op.drop_table('nodes')
