"""Entry point of every subprocess the integration tests start: ``slocast`` + the test family."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import families  # noqa: E402

from slocast.cli import main  # noqa: E402

if __name__ == "__main__":
    families.register()
    sys.exit(main(sys.argv[1:]))
