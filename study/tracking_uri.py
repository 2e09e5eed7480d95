"""Where the study's MLflow tracker is (``--mlflow URI``): the URI checked before anything is
written (exit 2 with one line naming the bad value, the password masked), and the form MLflow's
client takes. ``study.tracking`` does the tracking."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlsplit

from study.errors import UserError
from study.masking import masked_url

# The tracker's own schemes (MLflow's tracking stores); a URI without one is a folder.
SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
VALID = (
    "a folder (a local file store), file:///DIR, sqlite:///FILE.db, http(s)://HOST[:PORT] (a tracking server), "
    "postgresql://... or mysql://..."
)


def check_uri(uri: str) -> None:
    """Refuse a tracking URI that cannot work, before anything is written: an unknown scheme, a
    folder or database file that cannot be made, a server URL without a host. Nothing is
    contacted (a server that is down is found when the study starts, and only warned of).
    Whether MLflow is installed is ``require_mlflow``'s question (``status`` and ``report`` do
    not need it)."""
    shown = masked_url(uri)
    scheme, path = split_uri(uri)
    if scheme not in ("", *SCHEMES):
        raise UserError(f"tracking.mlflow={shown!r} has the unknown scheme {scheme + '://'!r}; valid: {VALID}")
    if scheme in ("", "file"):
        _check_folder(shown, Path(path).expanduser())
    elif scheme == "sqlite":
        if path in ("", ":memory:"):
            raise UserError(
                f"tracking.mlflow={shown!r} is an in-memory database, which worker processes cannot share; give a "
                "file, e.g. sqlite:///mlflow.db"
            )
        _check_database_file(shown, Path(path).expanduser())
    elif scheme in ("http", "https"):
        parts = urlsplit(uri)
        try:
            parts.port  # noqa: B018 - parsing it refuses a port that is not a number
        except ValueError:
            raise UserError(
                f"tracking.mlflow={shown!r} has a port that is not a number; e.g. http://HOST:5000"
            ) from None
        if not parts.hostname:
            raise UserError(f"tracking.mlflow={shown!r} names no host; give the tracking server, e.g. http://HOST:5000")
    elif scheme != "databricks":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(uri)
        except (ArgumentError, ValueError):
            raise UserError(
                f"tracking.mlflow={shown!r} is not a database URL; e.g. postgresql://USER@HOST/DB"
            ) from None


def require_mlflow(cfg) -> None:
    """Refuse a tracked study where MLflow is not installed, before anything is written."""
    if cfg.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        raise UserError(
            f"tracking.mlflow={masked_url(cfg.tracking.mlflow)!r} needs MLflow, which is not installed: "
            "pip install -e '.[tracking]' (or pip install mlflow)"
        )


def split_uri(uri: str) -> tuple[str, str]:
    """(base scheme, path) of a tracking URI: ('', uri) for a plain folder, ('sqlite', 'x.db')
    for sqlite:///x.db, ('postgresql', ...) for postgresql+psycopg://..."""
    head, sep, rest = uri.partition("://")
    if not sep:
        return "", uri
    scheme = head.split("+", 1)[0].lower()
    if scheme == "sqlite":
        return scheme, rest[1:] if rest.startswith("/") else rest
    if scheme == "file":
        return scheme, urlsplit(uri).path
    return scheme, rest


def _check_folder(shown: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"tracking.mlflow={shown!r} is a file, not a folder; give a folder (made if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"tracking.mlflow={shown!r} cannot be written ({str(existing)!r}); give a folder you can write to"
        )


def _check_database_file(shown: str, path: Path) -> None:
    if path.exists() and not path.is_file():
        raise UserError(f"tracking.mlflow={shown!r} is not a file; give a database file, e.g. sqlite:///mlflow.db")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise UserError(
            f"tracking.mlflow={shown!r}: the folder {str(folder)!r} does not exist; SQLite makes a file, not its folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"tracking.mlflow={shown!r} cannot be written ({str(folder)!r}); give a folder you can write to"
        )


def client_uri(uri: str) -> str:
    """The URI MLflow is given: a plain folder as an absolute file URI (workers may start elsewhere)."""
    scheme, path = split_uri(uri)
    return Path(path).expanduser().absolute().as_uri() if scheme == "" else uri
