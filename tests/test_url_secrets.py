"""url_secrets: the one home of password redaction in storage URLs."""

from __future__ import annotations

from rnnsweep.orchestrator import url_secrets


def test_redact_replaces_only_the_password():
    assert (
        url_secrets.redact("postgresql+psycopg2://alice:pa%40ss-1@db.example:5432/optuna?x=1")
        == "postgresql+psycopg2://alice:***@db.example:5432/optuna?x=1"
    )
    for plain in (
        "sqlite:////data/optuna.db",
        "postgresql://alice@127.0.0.1/optuna",
        "http://127.0.0.1:5000",
        "postgresql://alice:***@h/db",
        "",
    ):
        assert url_secrets.redact(plain) == plain


def test_connectable_drops_an_unknown_password_and_restores_a_remembered_one():
    redacted = "postgresql://bob:***@h:5432/db"
    assert url_secrets.connectable(redacted) == "postgresql://bob@h:5432/db"  # libpq: PGPASSWORD
    url_secrets.redact("postgresql://bob:wrong-one@h:5432/db")  # seen, but never opened a store
    assert url_secrets.connectable(redacted) == "postgresql://bob@h:5432/db"
    url_secrets.remember("postgresql://bob:right-one@h:5432/db")
    assert url_secrets.connectable(redacted) == "postgresql://bob:right-one@h:5432/db"
    assert url_secrets.connectable("sqlite:////x.db") == "sqlite:////x.db"


def test_without_password_and_scrub():
    assert url_secrets.without_password("postgresql://carol:p%3Aw@h/db") == (
        "postgresql://carol@h/db",
        "p:w",
    )
    bare = "postgresql://carol@h/db"
    assert url_secrets.without_password(bare) == (bare, None)
    url_secrets.redact("postgresql://dave:Hunter-22@h/db")
    text = 'failed: postgresql://eve:other-secret@h/db; FATAL for "dave" with Hunter-22'
    assert url_secrets.scrub(text) == 'failed: postgresql://eve:***@h/db; FATAL for "dave" with ***'
