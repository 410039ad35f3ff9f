"""The backtest service: scores predictors on out-of-time labelled rows and reports honestly."""
