"""Roles (groups of users holding permissions in the datacenters they are attached to), DC
owners and DC visibility (reference §4.2-4.3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datacenters') as batch:
        batch.add_column(sa.Column('owner_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('access', sa.SmallInteger(), server_default=sa.text('3'), nullable=False))
        batch.create_foreign_key(op.f('fk_datacenters_owner_id_users'), 'users', ['owner_id'], ['id'],
                                 ondelete='SET NULL', use_alter=True)
    op.create_table('roles',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('permissions', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roles')),
    sa.UniqueConstraint('name', name=op.f('uq_roles_name'))
    )
    op.create_table('role_members',
    sa.Column('role_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name=op.f('fk_role_members_role_id_roles'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_role_members_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('role_id', 'user_id', name=op.f('pk_role_members'))
    )
    op.create_index(op.f('ix_role_members_user_id'), 'role_members', ['user_id'], unique=False)
    op.create_table('role_dcs',
    sa.Column('role_id', sa.Integer(), nullable=False),
    sa.Column('dc_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['dc_id'], ['datacenters.id'], name=op.f('fk_role_dcs_dc_id_datacenters'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name=op.f('fk_role_dcs_role_id_roles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('role_id', 'dc_id', name=op.f('pk_role_dcs'))
    )


def downgrade() -> None:
    op.drop_table('role_dcs')
    op.drop_index(op.f('ix_role_members_user_id'), table_name='role_members')
    op.drop_table('role_members')
    op.drop_table('roles')
    with op.batch_alter_table('datacenters') as batch:
        batch.drop_constraint(op.f('fk_datacenters_owner_id_users'), type_='foreignkey')
        batch.drop_column('access')
        batch.drop_column('owner_id')
