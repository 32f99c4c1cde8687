"""Entry point for ``python -m modeldeploy``: the same command line as ``modeldeploy``."""

from modeldeploy.cli import main

raise SystemExit(main())
