"""headline-signal: ingest, trainer, inference and backtest services sharing ``services.common``."""
