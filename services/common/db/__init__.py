"""The database every service shares: engines, typed models, migrations."""

from services.common.db.engine import get_engine, get_sessionmaker, is_postgres, ping, session_scope

__all__ = ["get_engine", "get_sessionmaker", "is_postgres", "ping", "session_scope"]
