"""One floor above the services: what spans them.

The services (``services.ingest``, ``services.trainer``, ``services.inference``,
``services.backtest``) import only themselves and ``services.common``; this package may import
any of them. It holds the ``hsig`` command line that composes every service's commands
(``cli``), ``make demo`` (``demo``), the research note's reproduction across ingest, trainer,
inference and backtest (``reproduce``), walk-forward evaluation (``walk_forward``: a version of each
method trained per fold through the job queue, scored on its own fold, pooled), the bundled data through the live ingest paths
(``bundled``), the local feed and exchange servers replaying recorded responses
(``replay_server``) and the child-process management the demo and the tests use
(``processes``). tests/test_boundaries.py holds the services to that rule.
"""
