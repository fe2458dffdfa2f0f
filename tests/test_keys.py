"""Key names cannot be made to meet: what callers name (tenants, request ids) never turns one
key into another's, nor moves it out of its model's slot."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.crc import key_slot

from registry import ConfigError, ModelSpec
from registry.admission.types import check_tenant
from registry.budgets.types import Budget
from registry.keys import Keys
from registry.models import validate_tenant
from tests.conftest import model

KEYS = Keys("registry")
MODEL = "openai:gpt-4"
# Mostly the letters and separators key names are made of, so that structural look-alikes
# (a tenant ending in ":r:y", an id holding ":w:rpm") come up often; sometimes anything.
_PIECES = ["x", "y", ":", "r", "w", "s", "t", "rpm", "tpm", "itpm", "otpm", "rpd", ":r:", ":w:", ":s:", ":t:", ":l:"]
_PARTS = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5).map("".join)
_ANY = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
TENANTS = (_PARTS | _ANY).filter(lambda t: _valid_tenant(t))
IDS = _PARTS | _ANY  # request ids: any string of 1 to 128 characters


def _valid_tenant(name: str) -> bool:
    try:
        validate_tenant(name)
    except ValueError:
        return False
    return name != "*"


def _keys_of(tenant: str | None, request_id: str) -> dict[str, tuple[Any, ...]]:
    """Every admission key one (tenant, request id) names, with what it stands for."""
    named = {
        KEYS.reservation(MODEL, request_id, tenant): ("record", tenant, request_id),
        KEYS.settled(MODEL, request_id, tenant): ("marker", tenant, request_id),
    }
    for limit in ("rpm", "tpm", "itpm", "otpm", "rpd"):
        named[KEYS.window(MODEL, limit, tenant)] = ("window", tenant, limit)
    return named


_KINDS = {"r": "record", "s": "marker", "w": "window"}


def _read_back(key: str) -> tuple[Any, ...]:
    """What an admission key stands for, read from its name alone: after the model's tag, an
    optional ``:t:<tenant>`` (a tenant ends at the next colon), then ``:<kind>:<the rest>``."""
    rest = key.removeprefix(KEYS.admission_tag(MODEL))
    tenant = None
    if rest.startswith(":t:"):
        tenant, _, rest = rest[3:].partition(":")
        rest = ":" + rest
    return (_KINDS[rest[1]], tenant, rest[3:])


@given(tenant=st.none() | TENANTS, request_id=IDS)
@settings(max_examples=500, deadline=None)
def test_every_key_reads_back_as_what_it_names(tenant: str | None, request_id: str) -> None:
    """Each key's name can be read back into the one (kind, tenant, id) it was made from, so no
    two different ones can ever share a key; and every key stays in the model's slot."""
    for key, meaning in _keys_of(tenant, request_id).items():
        assert _read_back(key) == meaning, (key, meaning)
        assert key_slot(key.encode()) == key_slot(KEYS.admission_tag(MODEL).encode())


def test_every_limit_has_a_window_key_of_its_own() -> None:
    """Each limit name, the model's and the tenant's, names a window no other limit shares."""
    from registry.admission.ops import window_key
    from registry.admission.types import LIMIT_NAMES

    keys = {window_key(KEYS, MODEL, name, "acme" if name.startswith("tenant.") else None) for name in LIMIT_NAMES}
    assert len(keys) == len(LIMIT_NAMES) == 10
    assert KEYS.window(MODEL, "itpm") in keys
    assert KEYS.window(MODEL, "otpm", "acme") in keys


def test_the_collision_a_colon_in_a_tenant_would_make() -> None:
    """Why tenants may not hold ':': tenant x:r:y's window would be tenant x's record."""
    assert KEYS.window(MODEL, "rpm", "x:r:y") == KEYS.reservation(MODEL, "y:w:rpm", "x")
    with pytest.raises(ValueError, match="':'"):
        validate_tenant("x:r:y")


@pytest.mark.parametrize("name", ["x:r:y", "team:a", ":", "a{b}", "a b", ""])
def test_a_tenant_name_that_could_break_keys_is_refused_at_every_edge(name: str) -> None:
    with pytest.raises(ConfigError):
        check_tenant(name)
    with pytest.raises(ValidationError, match="tenant_limits"):
        ModelSpec.model_validate(model(tenant_limits={name: {"requests_per_minute": 1}}))
    with pytest.raises(ValidationError, match="tenant"):
        Budget.model_validate({"tenant": name, "amount": "1", "period": "day"})


@pytest.mark.parametrize("name", ["acme", "team-a", "org_123", "acme.eu", "a/b", "ünïcødé"])
def test_tenant_names_people_use_pass(name: str) -> None:
    assert check_tenant(name) == name
    assert validate_tenant(name) == name
