"""The serving policy on its own: tiers, budgets and the one-tier-at-a-time escalation rule."""

import pytest

from shared.errors import ConfigError, InputError
from shared.service.policy import Budget, BudgetLedger, Tier, parse_tiers, plan_escalation, resolve_tiers
from shared.vocab import BUDGET_EXHAUSTED, missing_flag

TIERS = [Tier("local", 0.8), Tier("api", 0.6)]


def test_tiers_parse_in_order_with_optional_thresholds_and_bad_ones_are_named():
    assert parse_tiers("local, api@0.6") == [Tier("local", None), Tier("api", 0.6)]
    for bad, says in [("gpt", "not an LLM source"), ("local,local", "twice"), ("api@high", "not a number"),
                      ("api@1.5", r"within \[0, 1\]")]:
        with pytest.raises(ConfigError, match=says):
            parse_tiers(bad)


def test_tiers_resolve_to_what_the_classifier_was_trained_with_and_what_is_configured():
    tiers = resolve_tiers(parse_tiers("local,api@0.6"), classifier_sources=["local", "api"],
                          configured_sources=["local", "api"], default_threshold=0.85)
    assert tiers == [Tier("local", 0.85), Tier("api", 0.6)]
    assert resolve_tiers(parse_tiers("local,api"), classifier_sources=["api"], configured_sources=["local", "api"],
                         default_threshold=0.7) == [Tier("api", 0.7)]
    assert resolve_tiers(parse_tiers("local"), classifier_sources=["local"], configured_sources=[],
                         default_threshold=0.7) == []


def test_budget_from_share_count_or_money():
    assert Budget.of(10, share=0.25) == Budget(items=2)
    assert Budget.of(10, items=3, usd=0.5) == Budget(items=3, usd=0.5)
    assert Budget.of(10).unlimited
    for kwargs, says in [({"share": 0.2, "items": 2}, "not both"), ({"share": 1.2}, r"\[0, 1\]"),
                         ({"items": -1}, "negative"), ({"usd": -0.1}, "negative")]:
        with pytest.raises(InputError, match=says):
            Budget.of(10, **kwargs)


def plan(confidence, *, climbed=(), escalated_before=False, unavailable=None, ledger=None):
    return plan_escalation(confidence, TIERS, climbed=set(climbed), escalated_before=escalated_before,
                           unavailable=unavailable or {}, ledger=ledger)


def test_an_item_climbs_one_tier_at_a_time_while_below_its_threshold():
    assert plan(0.9).ask is None                                    # confident: finish on the fast path
    assert plan(0.7).ask == Tier("local", 0.8)                      # below local's threshold
    assert plan(0.7, climbed={"local"}).ask is None                 # after local, above api's threshold
    assert plan(0.5, climbed={"local"}).ask == Tier("api", 0.6)     # still unsure: one tier up
    assert plan(0.1, climbed={"local", "api"}).ask is None          # no tier left


def test_a_tier_that_is_down_is_skipped_with_a_flag():
    p = plan(0.5, unavailable={"local": "circuit open"})
    assert p.ask == Tier("api", 0.6) and p.skipped == {"local": "circuit open"} and p.flags == (missing_flag("local"),)
    p = plan(0.5, unavailable={"local": "down", "api": "down"})
    assert p.ask is None and set(p.skipped) == {"local", "api"}


def test_the_budget_stops_new_items_but_not_those_already_climbing():
    ledger = BudgetLedger(budget=Budget(items=1), items_escalated=0, spent_usd=0.0, in_flight_usd=0.0, cost_estimate={})
    assert plan(0.5, ledger=ledger).ask == Tier("local", 0.8)
    refused = plan(0.5, ledger=ledger)
    assert refused.ask is None and refused.flags == (BUDGET_EXHAUSTED,)
    assert plan(0.5, climbed={"local"}, escalated_before=True, ledger=ledger).ask == Tier("api", 0.6)


def test_the_money_budget_counts_spent_and_in_flight_estimates():
    ledger = BudgetLedger(budget=Budget(usd=0.03), items_escalated=0, spent_usd=0.01, in_flight_usd=0.0,
                          cost_estimate={"local": 0.0, "api": 0.01})
    assert plan(0.5, climbed={"local"}, escalated_before=True, ledger=ledger).ask == Tier("api", 0.6)
    assert plan(0.5, climbed={"local"}, escalated_before=True, ledger=ledger).ask == Tier("api", 0.6)
    assert plan(0.5, climbed={"local"}, escalated_before=True, ledger=ledger).flags == (BUDGET_EXHAUSTED,)
    assert plan(0.5, ledger=ledger).ask == Tier("local", 0.8)  # the free tier still fits
