"""The inbox and the stream heads move into the rows that are written anyway.

- A handled command is one with a terminal task event caused by it: the unique partial index
  ``uq_events_handled`` replaces the ``processed_messages`` table (one insert less per command).
- An image's stream head is ``images.stream_version`` (the writer holds that row's lock anyway);
  a deleted image's head stays readable from the event store. Replaces the ``streams`` table
  (one upsert less per command).

Downgrade rebuilds both tables from the event store.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_TERMINAL = sa.text("type IN ('task.failed', 'task.succeeded')")
#: Which consumer handled each command type (to rebuild the inbox on downgrade).
_CONSUMERS = {"image.import": "importer", "image.update": "updater", "image.delete": "deleter"}


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('stream_version', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.execute("UPDATE images SET stream_version = COALESCE("
               "(SELECT version FROM streams WHERE streams.stream_id = 'image:' || images.uuid), 0)")
    op.drop_table('streams')
    op.drop_table('processed_messages')
    op.create_index('uq_events_handled', 'events', ['causation_id'], unique=True,
                    sqlite_where=_TERMINAL, postgresql_where=_TERMINAL)


def downgrade() -> None:
    op.drop_index('uq_events_handled', table_name='events', sqlite_where=_TERMINAL, postgresql_where=_TERMINAL)
    processed = op.create_table('processed_messages',
    sa.Column('consumer', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'message_id', name=op.f('pk_processed_messages'))
    )
    streams = op.create_table('streams',
    sa.Column('stream_id', sa.String(length=80), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('stream_id', name=op.f('pk_streams'))
    )
    conn = op.get_bind()
    heads = conn.execute(sa.text("SELECT stream_id, MAX(stream_version) FROM events "
                                 "WHERE stream_id IS NOT NULL GROUP BY stream_id")).all()
    if heads:
        op.bulk_insert(streams, [{"stream_id": s, "version": v} for s, v in heads])
    now = datetime.now(timezone.utc)
    rows = []
    for causation_id, body in conn.execute(sa.text(f"SELECT causation_id, body FROM events "
                                                   f"WHERE causation_id IS NOT NULL AND {_TERMINAL.text}")):
        command = json.loads(body).get("payload", {}).get("command")
        rows.append({"consumer": _CONSUMERS.get(command, "unknown"), "message_id": causation_id,
                     "processed_at": now})
    if rows:
        op.bulk_insert(processed, rows)
    with op.batch_alter_table('images') as batch:
        batch.drop_column('stream_version')
