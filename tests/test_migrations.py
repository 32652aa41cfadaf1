"""Alembic: the migrated schema equals the models, and data survives upgrades."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from mirror.index import Base
from mirror.index.database import HEAD_REVISION, upgrade_to_head
from mirror.sources.base import load_all

load_all()  # every source's tables are in Base.metadata


def _config(engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("mirror.migrations")))
    config.attributes["connection_engine"] = engine
    return config


def test_migrated_schema_equals_the_models(tmp_path):
    """Every revision replayed from nothing gives the models' schema: this is what lets a
    new index be created from the models in one step (``upgrade_to_head``)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    command.upgrade(_config(engine), "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def _schema(engine) -> dict[str, list]:
    inspector = inspect(engine)
    return {table: sorted([(c["name"], str(c["type"]), c["nullable"])
                           for c in inspector.get_columns(table)]
                          + [("index", i["name"], tuple(i["column_names"]), bool(i["unique"]))
                             for i in inspector.get_indexes(table)]
                          + [("pk", tuple(inspector.get_pk_constraint(table)
                                          ["constrained_columns"]))], key=repr)
            for table in inspector.get_table_names()}


def test_a_new_index_is_created_from_the_models_and_stamped_at_head(tmp_path):
    """The one-step creation of a new index has the same tables, columns and indexes as
    replaying every revision, and is stamped at head so the next revision applies."""
    created = create_engine(f"sqlite:///{tmp_path / 'created.sqlite'}")
    migrated = create_engine(f"sqlite:///{tmp_path / 'migrated.sqlite'}")
    upgrade_to_head(created)
    command.upgrade(_config(migrated), "head")
    assert _schema(created) == _schema(migrated)
    head = ScriptDirectory.from_config(_config(created)).get_current_head()
    with created.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_data_from_the_first_revision_survives_upgrade_to_head(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    command.upgrade(_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO images (id, name, doc_sha256, doc, removed, synced_at, public) "
            "VALUES ('5436e3abbae478396759f0cf', 'ISIC_0000000', :sha, '{\"a\": 1}', 0, "
            "'2026-01-01T00:00:00+00:00', 1)"), {"sha": "0" * 64})
    upgrade_to_head(engine)
    upgrade_to_head(engine)  # idempotent
    head = ScriptDirectory.from_config(_config(engine)).get_current_head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        row = conn.execute(text("SELECT name, doc FROM images")).one()
    assert row.name == "ISIC_0000000" and row.doc == '{"a": 1}'


def test_head_revision_is_alembics_head():
    """``upgrade_to_head`` skips Alembic when an index records ``HEAD_REVISION``: a new
    revision must move that constant too, or old indexes would never be migrated."""
    engine = create_engine("sqlite://")
    assert ScriptDirectory.from_config(_config(engine)).get_current_head() == HEAD_REVISION


def test_an_index_behind_head_is_still_migrated(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    command.upgrade(_config(engine), "0006")
    upgrade_to_head(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
