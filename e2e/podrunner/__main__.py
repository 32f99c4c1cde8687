"""``python -m e2e.podrunner``: the pod runner until SIGTERM or SIGINT (see ``background``)."""

from e2e.podrunner.background import main

raise SystemExit(main())
