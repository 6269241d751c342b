"""Serving policy: modes, escalation tiers, budgets and the per-item escalation decision.

Plain code with no database or Celery, so the rules are tested directly; the aggregator
(``shared.service.aggregate``) applies them under the job's row lock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.errors import ConfigError, InputError
from shared.vocab import BUDGET_EXHAUSTED, Mode, Source, missing_flag, values


def check_mode(mode: str, *, where: str = "mode") -> Mode:
    if mode not in values(Mode):
        raise InputError(f"{where} {mode!r} is not a mode; choose one of: {', '.join(values(Mode))}")
    return Mode(mode)


@dataclass(frozen=True)
class Tier:
    """One escalation step: ask the ``source`` LLM when confidence is below ``threshold``."""

    source: str
    threshold: float | None = None  # None until resolved against a classifier

    def as_dict(self) -> dict:
        return {"source": self.source, "threshold": self.threshold}


def parse_tiers(text: str) -> list[Tier]:
    """``local,api@0.6`` -> tiers in order; a threshold after ``@`` overrides the classifier's."""
    tiers: list[Tier] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        source, _, threshold = part.partition("@")
        source = source.strip()
        if source not in values(Source):
            raise ConfigError(f"FUSIONQ_ESCALATION_TIERS: {source!r} is not an LLM source; use {', '.join(values(Source))}")
        if any(t.source == source for t in tiers):
            raise ConfigError(f"FUSIONQ_ESCALATION_TIERS names {source!r} twice: an item climbs each tier once")
        value = None
        if threshold:
            try:
                value = float(threshold)
            except ValueError:
                raise ConfigError(f"FUSIONQ_ESCALATION_TIERS: threshold {threshold!r} of {source} is not a number") from None
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"FUSIONQ_ESCALATION_TIERS: threshold {value} of {source} must be within [0, 1]")
        tiers.append(Tier(Source(source), value))
    return tiers


def resolve_tiers(configured: Sequence[Tier], *, classifier_sources: Sequence[str], configured_sources: Sequence[str],
                  default_threshold: float | None) -> list[Tier]:
    """The tiers a job of this classifier can use: sources its fusion network was trained with and
    that have an LLM configured, in the configured order, each with a threshold."""
    tiers = []
    for tier in configured:
        if tier.source in classifier_sources and tier.source in configured_sources:
            threshold = tier.threshold if tier.threshold is not None else default_threshold
            tiers.append(Tier(tier.source, 0.5 if threshold is None else float(threshold)))
    return tiers


@dataclass(frozen=True)
class Budget:
    """The most an auto job may spend on escalation: items (a count) and/or money. None = no cap."""

    items: int | None = None
    usd: float | None = None

    @classmethod
    def of(cls, n_items: int, *, share: float | None = None, items: int | None = None,
           usd: float | None = None) -> "Budget":
        """From a caller's request: a share of the job's items, a count, and/or dollars."""
        if share is not None and items is not None:
            raise InputError("give the item budget as a share or as a count, not both")
        if share is not None:
            if not 0.0 <= share <= 1.0 or math.isnan(share):
                raise InputError(f"budget share {share} must be within [0, 1]")
            items = math.floor(share * n_items + 1e-9)
        if items is not None and items < 0:
            raise InputError(f"budget of {items} items must not be negative")
        if usd is not None and (usd < 0 or math.isnan(usd)):
            raise InputError(f"budget of {usd} USD must not be negative")
        return cls(items=items, usd=usd)

    @property
    def unlimited(self) -> bool:
        return self.items is None and self.usd is None


@dataclass
class BudgetLedger:
    """What an auto job has used of its budget, updated as the aggregator admits escalations.

    Money counts what finished requests cost plus an estimate for those still in flight, so the
    cap holds before the bills arrive (to within the estimate's error).
    """

    budget: Budget
    items_escalated: int
    spent_usd: float
    in_flight_usd: float
    cost_estimate: Mapping[str, float]

    def allows(self, source: str, *, new_item: bool) -> bool:
        if self.budget.items is not None and new_item and self.items_escalated + 1 > self.budget.items:
            return False
        if self.budget.usd is not None:
            if self.spent_usd + self.in_flight_usd + self.cost_estimate.get(source, 0.0) > self.budget.usd + 1e-12:
                return False
        return True

    def admit(self, source: str, *, new_item: bool) -> None:
        self.items_escalated += int(new_item)
        self.in_flight_usd += self.cost_estimate.get(source, 0.0)


@dataclass(frozen=True)
class Plan:
    """What happens next to an auto item: ask ``ask`` (a tier), or finish with ``flags``.

    ``skipped`` are tiers passed over because they are down (source -> reason); they count as
    climbed, so nobody asks them for this item again.
    """

    ask: Tier | None
    skipped: dict[str, str]
    flags: tuple[str, ...]


def plan_escalation(confidence: float, tiers: Sequence[Tier], *, climbed: set[str], escalated_before: bool,
                    unavailable: Mapping[str, str], ledger: BudgetLedger | None) -> Plan:
    """Move an item up one tier at a time while it is below the tier's threshold.

    ``climbed``: tiers this item already asked or skipped; ``escalated_before``: whether one of
    them was really asked (the item then no longer counts against an item budget). A tier that
    is down is skipped with a ``missing`` flag and the next tier is considered; an exhausted
    budget finishes the item on what it has, flagged.
    """
    skipped: dict[str, str] = {}
    flags: list[str] = []
    for tier in tiers:
        if tier.source in climbed:
            continue
        if confidence >= tier.threshold:
            break
        if tier.source in unavailable:
            skipped[tier.source] = unavailable[tier.source]
            flags.append(missing_flag(tier.source))
            continue
        new_item = not escalated_before
        if ledger is not None and not ledger.allows(tier.source, new_item=new_item):
            flags.append(BUDGET_EXHAUSTED)
            break
        if ledger is not None:
            ledger.admit(tier.source, new_item=new_item)
        return Plan(ask=tier, skipped=skipped, flags=tuple(flags))
    return Plan(ask=None, skipped=skipped, flags=tuple(flags))
