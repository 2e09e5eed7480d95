"""``python -m study.docs``: write the settings table of ``docs/configuration.md`` from the
declarations (``tests/test_settings.py`` fails while the committed page is stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from study.config import StudyConfig
from study.settings import with_docs_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main(page: Path = PAGE) -> int:
    """Rewrite the page's generated table; say whether it changed."""
    old = page.read_text()
    new = with_docs_table(old, StudyConfig)
    if new != old:
        page.write_text(new)
    print(f"{page}: settings table {'rewritten' if new != old else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE))
