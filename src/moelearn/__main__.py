"""``python -m moelearn`` runs the command line."""

import sys

from moelearn.cli import main

sys.exit(main())
