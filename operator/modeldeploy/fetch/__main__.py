"""``python -m modeldeploy.fetch``: run the fetcher directly."""

import sys

from modeldeploy.fetch.cli import main

sys.exit(main())
