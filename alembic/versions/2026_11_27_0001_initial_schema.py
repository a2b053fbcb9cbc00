"""Initial schema: accounts, datacenters, the write side, the event store, the read model.

Seeds the default datacenter ``main`` (id 1), as the original has it.

Revision ID: 0001
Revises: 
Create Date: 2026-11-27
"""
from __future__ import annotations

from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datacenters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=16), nullable=False),
    sa.Column('is_default', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('image_limit', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datacenters')),
    sa.UniqueConstraint('name', name=op.f('uq_datacenters_name'))
    )
    op.create_index('uq_datacenters_one_default', 'datacenters', ['is_default'], unique=True, sqlite_where=sa.text('is_default'), postgresql_where=sa.text('is_default'))

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('stream_id', sa.String(length=80), nullable=True),
    sa.Column('stream_version', sa.Integer(), nullable=True),
    sa.Column('correlation_id', sa.String(length=128), nullable=False),
    sa.Column('causation_id', sa.String(length=128), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('message_id', name=op.f('uq_events_message_id'))
    )
    op.create_index(op.f('ix_events_causation_id'), 'events', ['causation_id'], unique=False)
    op.create_index(op.f('ix_events_correlation_id'), 'events', ['correlation_id'], unique=False)
    op.create_index('ix_events_unpublished', 'events', ['id'], unique=False, sqlite_where=sa.text('published_at IS NULL'), postgresql_where=sa.text('published_at IS NULL'))
    op.create_index('uq_events_stream_version', 'events', ['stream_id', 'stream_version'], unique=True)

    op.create_table('locks',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_locks'))
    )
    op.create_table('processed_messages',
    sa.Column('consumer', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'message_id', name=op.f('pk_processed_messages'))
    )
    op.create_table('rm_images',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('owner', sa.String(length=150), nullable=False),
    sa.Column('dc_bound', sa.String(length=16), nullable=True),
    sa.Column('access', sa.SmallInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('doc', sa.Text(), nullable=False),
    sa.Column('dcs', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('uuid', name=op.f('pk_rm_images')),
    sa.UniqueConstraint('name', name=op.f('uq_rm_images_name'))
    )
    op.create_index('ix_rm_images_created', 'rm_images', ['created'], unique=False)

    op.create_table('rm_streams',
    sa.Column('stream_id', sa.String(length=80), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('stream_id', name=op.f('pk_rm_streams'))
    )
    op.create_table('rm_tasks',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('http_code', sa.Integer(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('code', sa.String(length=64), nullable=True),
    sa.Column('command', sa.String(length=64), nullable=False),
    sa.Column('object_name', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=150), nullable=True),
    sa.Column('owner', sa.String(length=150), nullable=True),
    sa.Column('dc', sa.String(length=16), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_rm_tasks'))
    )
    op.create_table('streams',
    sa.Column('stream_id', sa.String(length=80), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('stream_id', name=op.f('pk_streams'))
    )
    op.create_table('submitted_commands',
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('object_name', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=150), nullable=False),
    sa.Column('owner', sa.String(length=150), nullable=True),
    sa.Column('dc', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_submitted_commands')),
    sa.UniqueConstraint('task_id', name=op.f('uq_submitted_commands_task_id'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=150), nullable=False),
    sa.Column('api_key_digest', sa.String(length=64), nullable=True),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('is_superadmin', sa.Boolean(), nullable=False),
    sa.Column('api_access', sa.Boolean(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('default_dc_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['default_dc_id'], ['datacenters.id'], name=op.f('fk_users_default_dc_id_datacenters')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('api_key_digest', name=op.f('uq_users_api_key_digest')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('images',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('alias', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=16), nullable=False),
    sa.Column('desc', sa.String(length=128), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('access', sa.SmallInteger(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('ostype', sa.SmallInteger(), nullable=False),
    sa.Column('deploy', sa.Boolean(), nullable=False),
    sa.Column('resize', sa.Boolean(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('manifest_active', sa.JSON(), nullable=False),
    sa.Column('dc_bound_id', sa.Integer(), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('changed', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dc_bound_id'], ['datacenters.id'], name=op.f('fk_images_dc_bound_id_datacenters'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_images_owner_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('uuid', name=op.f('pk_images')),
    sa.UniqueConstraint('name', name=op.f('uq_images_name'))
    )
    op.create_table('image_dcs',
    sa.Column('image_uuid', sa.String(length=36), nullable=False),
    sa.Column('dc_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['dc_id'], ['datacenters.id'], name=op.f('fk_image_dcs_dc_id_datacenters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_uuid'], ['images.uuid'], name=op.f('fk_image_dcs_image_uuid_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_uuid', 'dc_id', name=op.f('pk_image_dcs'))
    )

    datacenters = sa.table(
        "datacenters",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("is_default", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(datacenters, [{"id": 1, "name": "main", "is_default": True, "created_at": datetime.now(timezone.utc)}])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT setval(pg_get_serial_sequence('datacenters', 'id'), (SELECT max(id) FROM datacenters))")


def downgrade() -> None:
    op.drop_table('image_dcs')
    op.drop_table('images')
    op.drop_table('users')
    op.drop_table('submitted_commands')
    op.drop_table('streams')
    op.drop_table('rm_tasks')
    op.drop_table('rm_streams')
    op.drop_index('ix_rm_images_created', table_name='rm_images')

    op.drop_table('rm_images')
    op.drop_table('processed_messages')
    op.drop_table('locks')
    op.drop_index('uq_events_stream_version', table_name='events')
    op.drop_index('ix_events_unpublished', table_name='events', sqlite_where=sa.text('published_at IS NULL'), postgresql_where=sa.text('published_at IS NULL'))
    op.drop_index(op.f('ix_events_correlation_id'), table_name='events')
    op.drop_index(op.f('ix_events_causation_id'), table_name='events')

    op.drop_table('events')
    op.drop_index('uq_datacenters_one_default', table_name='datacenters', sqlite_where=sa.text('is_default'), postgresql_where=sa.text('is_default'))

    op.drop_table('datacenters')
