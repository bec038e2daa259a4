"""Database URLs as the libraries that open them need them (no MLflow import: the
servers' launchers use it before anything heavy)."""


def sqlalchemy_url(url: str) -> str:
    """postgresql://… as SQLAlchemy needs it for psycopg 3 (the postgres extra's driver);
    any other URL as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url
