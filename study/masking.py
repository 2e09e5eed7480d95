"""Storage URLs as they are shown to people: errors, logs, ``status``, the workers table, the
report. A URL's password never leaves the process that was given it."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# scheme://user:password@ inside free text (a driver's error message, a traceback).
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?P<at>@)")


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (SQLAlchemy's own rendering); a text that is
    not a URL comes back with any credentials in it masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return mask_urls(str(url))


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    return _CREDENTIALS.sub(r"\g<head>***\g<at>", text)
