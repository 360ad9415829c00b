"""``python -m medsam_server.cli``: what the local worker launcher and the tests run."""

import sys

from .main import main

sys.exit(main())
