"""Alembic environment of provstore.

provstore runs migrations programmatically (``provstore.db.schema.upgrade``)
and hands Alembic an open connection through ``config.attributes``. Running
``alembic`` by hand also works: set ``sqlalchemy.url`` on the command line
(``alembic -x url=sqlite:///study/provstore.db upgrade head``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from provstore.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # render_as_batch: SQLite lacks most of ALTER TABLE, so column changes are
    # done by Alembic's copy-and-move batch mode.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
