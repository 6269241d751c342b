"""Classifier registry: publish a trained artifact as the next version of a name, and look it up."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import Classifier
from shared.errors import ClassifierNotFound, RegistryConflict


def parse_classifier_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version or None for the latest)."""
    name, sep, version = ref.strip().partition("@")
    if not name:
        raise ClassifierNotFound("empty classifier name: give NAME or NAME@VERSION")
    if not sep:
        return name, None
    if not version.isdigit():
        raise ClassifierNotFound(f"classifier reference {ref!r}: the version after @ must be a number, e.g. {name}@1")
    return name, int(version)


def find_classifier(*, session: Session, ref: str) -> Classifier:
    """The classifier row for ``NAME`` (latest version) or ``NAME@VERSION``."""
    name, version = parse_classifier_ref(ref)
    query = sa.select(Classifier).where(Classifier.name == name)
    query = query.where(Classifier.version == version) if version else query.order_by(Classifier.version.desc())
    row = session.scalars(query.limit(1)).first()
    if row is None:
        known = session.scalars(sa.select(Classifier.name).distinct().order_by(Classifier.name)).all()
        hint = f"known: {', '.join(known)}" if known else "the registry is empty: train one with `fusionq train`"
        raise ClassifierNotFound(f"no classifier {ref!r} in the registry ({hint})")
    return row


def next_version(*, session: Session, name: str) -> int:
    current = session.scalar(sa.select(sa.func.max(Classifier.version)).where(Classifier.name == name))
    return (current or 0) + 1


def publish_classifier(*, session: Session, row: Classifier) -> Classifier:
    """Insert ``row`` (its version already chosen); a concurrent publish of the same version fails loudly."""
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        raise RegistryConflict(
            f"classifier {row.name}@{row.version} was published concurrently by another process; train again"
        ) from exc
    return row


def list_classifiers(*, session: Session) -> list[Classifier]:
    return list(session.scalars(sa.select(Classifier).order_by(Classifier.name, Classifier.version)))
