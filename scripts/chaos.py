#!/usr/bin/env python3
"""Chaos runs: the entry point of zkdeploy.testing.chaos.run (see docs/chaos.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.testing.chaos.run import main

if __name__ == "__main__":
    sys.exit(main())
