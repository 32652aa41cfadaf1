"""Alembic environment: runs on the engine the caller passes (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from mirror.index.models import Base
from mirror.sources.base import load_all

load_all()  # every source's typed tables join Base.metadata

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("connection_engine")
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
