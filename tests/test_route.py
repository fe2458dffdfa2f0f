"""route(): the cheapest model with room now, falling back when the cheapest is at its limit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from registry import ConfigError, ModelNotFoundError, RequestTooLargeError
from registry.testing import FakeClock, use_clock
from tests.conftest import model

# per million tokens (input / output): cheap 1/2, mid 3/6, dear 10/20; dear has the largest window
MODELS = [
    model("p", "cheap", cost={"input": "1", "output": "2"}, rate_limit={"requests_per_minute": 2}),
    model("p", "mid", cost={"input": "3", "output": "6"}, rate_limit={"requests_per_minute": 1}),
    model("p", "dear", cost={"input": "10", "output": "20"}, context_window=100_000),
    model("p", "vision", cost={"input": "0.5", "output": "1"}, capabilities=["vision"]),
    model("p", "old", cost={"input": "0.1", "output": "0.1"}, status="deprecated"),
    model("p", "euro", cost={"input": "0.1", "output": "0.1", "currency": "EUR"}),
]


@pytest.fixture
def routed(reg: Any) -> Any:
    reg.register_models(MODELS)
    use_clock(reg, FakeClock(1_000_000_000))
    return reg


def test_the_cheapest_with_room_wins_and_the_next_takes_over(routed: Any) -> None:
    picks = [routed.route(input_tokens=1000, max_output_tokens=100, capability="chat") for _ in range(5)]
    # cheap admits 2 a minute, then mid 1, then dear (no limit); vision lacks chat; old is
    # deprecated and euro is priced in another currency
    assert [p.model_key for p in picks] == ["p:cheap", "p:cheap", "p:mid", "p:dear", "p:dear"]
    assert all(p.decision.allowed and p.decision.reservation.model_key == p.model_key for p in picks)
    assert picks[3].tried == (("p:cheap", "requests_per_minute"), ("p:mid", "requests_per_minute"))
    assert picks[0].tried == ()
    decision, key, _ = picks[2]  # a plain tuple too
    assert key == "p:mid"
    assert routed.settle(decision.reservation, 1000, 50)


def test_max_cost_context_window_candidates_and_none_with_room(routed: Any) -> None:
    # 1,000 in + 100 out: cheap $0.0012, mid $0.0036, dear $0.012
    with pytest.raises(ModelNotFoundError):
        routed.route(input_tokens=1000, max_output_tokens=100, max_cost="0.001", capability="chat")
    # without a capability the vision model is the cheapest (1,000 x 0.5/M + 100 x 1/M)
    assert routed.route(input_tokens=1000, max_output_tokens=100, max_cost="0.001").model_key == "p:vision"
    first = routed.route(input_tokens=1000, max_output_tokens=100, max_cost=Decimal("0.004"), capability="chat")
    assert first.model_key == "p:cheap"
    # only dear's window holds 20,000 tokens
    assert routed.route(input_tokens=20_000, max_output_tokens=0, capability="chat").model_key == "p:dear"
    # candidates restrict and are ranked by price, not by the order given
    routed.route(input_tokens=10, max_output_tokens=10, candidates=["p:cheap"])  # cheap now full
    none = routed.route(input_tokens=10, max_output_tokens=10, candidates=["p:mid", "p:cheap"])
    assert none.model_key == "p:mid"
    none = routed.route(input_tokens=10, max_output_tokens=10, candidates=["p:mid", "p:cheap"])
    assert (none.model_key, none.decision.allowed) == (None, False)
    assert [k for k, _ in none.tried] == ["p:cheap", "p:mid"]
    assert 0 < none.decision.retry_after <= 61  # a minute, exact to one 1 s bucket
    assert routed.route(input_tokens=10, max_output_tokens=10, currency="eur").model_key == "p:euro"
    with pytest.raises(ModelNotFoundError):
        routed.route(input_tokens=10, candidates=["p:nope"])
    with pytest.raises(ConfigError):
        routed.route(input_tokens=10, max_cost=0.5)
    with pytest.raises(ConfigError):
        routed.route(input_tokens=-1)


def test_a_model_too_small_for_the_request_is_skipped(reg: Any) -> None:
    reg.register_models(
        [
            model("p", "tiny", cost={"input": "1", "output": "1"}, rate_limit={"tokens_per_minute": 100}),
            model("p", "big", cost={"input": "2", "output": "2"}),
        ]
    )
    picked = reg.route(input_tokens=500, max_output_tokens=0)
    assert (picked.model_key, picked.tried) == ("p:big", (("p:tiny", "tokens_per_minute"),))
    with pytest.raises(RequestTooLargeError):
        reg.route(input_tokens=500, max_output_tokens=0, candidates=["p:tiny"])


def test_a_model_whose_output_window_is_full_is_passed_over(reg: Any) -> None:
    """Input and output limited apart: a model out of output tokens sends the request on, while
    one asking for no more output than is left still fits."""
    limits = {"input_tokens_per_minute": 5_000, "output_tokens_per_minute": 1_000}
    reg.register_models(
        [
            model("p", "split", cost={"input": "1", "output": "1"}, rate_limit=limits),
            model("p", "big", cost={"input": "2", "output": "2"}),
        ]
    )
    assert reg.route(input_tokens=100, max_output_tokens=900).model_key == "p:split"
    picked = reg.route(input_tokens=100, max_output_tokens=200)
    assert (picked.model_key, picked.tried) == ("p:big", (("p:split", "output_tokens_per_minute"),))
    assert reg.route(input_tokens=4_800, max_output_tokens=100).model_key == "p:split"  # both exactly full
    picked = reg.route(input_tokens=200, max_output_tokens=0)
    assert (picked.model_key, picked.tried) == ("p:big", (("p:split", "input_tokens_per_minute"),))


def test_a_tenant_budget_sends_the_request_elsewhere(routed: Any) -> None:
    routed.set_budget("acme", "0.002", "day", model="p:cheap")
    ask = {"input_tokens": 1000, "max_output_tokens": 100, "tenant": "acme", "capability": "chat"}
    assert routed.route(**ask).model_key == "p:cheap"
    second = routed.route(**ask)
    assert second.model_key == "p:mid"
    assert second.tried == (("p:cheap", "budget:p:cheap:day"),)
