"""Every Redis key and channel name the library uses, built in this one module.

Layout (namespace ``registry`` by default; ``{...}`` is the cluster hash tag)::

    {registry:catalog}:model:<provider>:<id>   hash    one model (fields: see catalog/codec.py)
    {registry:catalog}:models                  zset    every model key, scored by its revision
    {registry:catalog}:meta                    hash    revision (+1 per write), epoch (new when wiped)
    {registry:catalog}:events                  stream  capped log of writes, entry id <revision>-0
    {registry:catalog}:changes                 channel pub/sub: a write's new revision

Admission keys, one hash tag per model (its tenants' limits share it)::

    {registry:adm:<provider>:<id>}:w:<limit>              hash  sliding-window buckets
    {registry:adm:<provider>:<id>}:t:<tenant>:w:<limit>   hash  a tenant's buckets on the model
    {registry:adm:<provider>:<id>}:r:<request id>         string what a request admitted under that id holds
    {registry:adm:<provider>:<id>}:t:<tenant>:r:<id>      string the same, for a tenant's request
    {registry:adm:<provider>:<id>}[:t:<tenant>]:s:<token> string an acquire settled or released
    {registry:adm:<provider>:<id>}[:t:<tenant>]:l:total   hash  ledger counters, all time
    {registry:adm:<provider>:<id>}[:t:<tenant>]:l:m:<n>   hash  ... of UTC minute n (also h:, d:)
    {registry:adm:<provider>:<id>}:l:id:<request id>      string a recorded request id (24 h)
    {registry:adm:<provider>:<id>}:l:tenants              set   tenants with usage on the model
    {registry:adm:<provider>:<id>}:l:denied               hash  limit name -> refusals, all time
    {registry:adm:<provider>:<id>}:events                 stream sampled usage records (capped)

Budgets: their definitions are catalog items (so every worker's local copy holds them); what
is spent and held against them lives under one hash tag per tenant::

    {registry:catalog}:budget:<tenant>                    hash  the tenant's budgets (zset member @budget:<tenant>)
    {registry:bud:<tenant>}:s:<scope>:<period>:<index>    hash  spent and held of one budget period
    {registry:bud:<tenant>}:r:<reservation id>            hash  what a request holds on the budgets
    {registry:bud:<tenant>}:events                        stream budget threshold events (capped)

``<scope>`` is ``*`` (every model) or a model key; ``<period>`` is day, week or month and
``<index>`` the UTC period's number (see registry/budgets/periods.py).

The whole catalog shares one hash tag, so it sits in one cluster slot and every catalog
script touches keys of that slot only. Each model's admission keys have a tag of their own,
so that models spread across slots and one script never leaves its model's slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import ConfigError

__all__ = ["DEFAULT_NAMESPACE", "Keys"]

DEFAULT_NAMESPACE = "registry"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one namespace. Two namespaces never share a key."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.match(self.namespace):
            raise ConfigError(f"namespace {self.namespace!r}: use 1 to 64 letters, digits, '.', '_' or '-'")

    @property
    def catalog_tag(self) -> str:
        return f"{{{self.namespace}:catalog}}"

    def model(self, model_key: str) -> str:
        """The hash of one model, ``model_key`` being ``provider:id``."""
        return f"{self.catalog_tag}:model:{model_key}"

    def model_key_of(self, redis_key: str) -> str:
        """Inverse of :meth:`model`."""
        prefix = f"{self.catalog_tag}:model:"
        if not redis_key.startswith(prefix):
            raise ValueError(f"{redis_key!r} is not a model key of namespace {self.namespace!r}")
        return redis_key[len(prefix) :]

    @property
    def models(self) -> str:
        return f"{self.catalog_tag}:models"

    @property
    def meta(self) -> str:
        return f"{self.catalog_tag}:meta"

    @property
    def events(self) -> str:
        return f"{self.catalog_tag}:events"

    @property
    def changes_channel(self) -> str:
        return f"{self.catalog_tag}:changes"

    def admission_tag(self, model_key: str) -> str:
        return f"{{{self.namespace}:adm:{model_key}}}"

    def window(self, model_key: str, limit: str, tenant: str | None = None) -> str:
        """The bucket hash of one limit of a model, or of a tenant on that model."""
        scope = "" if tenant is None else f":t:{tenant}"
        return f"{self.admission_tag(model_key)}{scope}:w:{limit}"

    def reservation(self, model_key: str, reservation_id: str, tenant: str | None = None) -> str:
        """The record of a request admitted under a caller-given id (a reservation named after its
        own token is never written); a tenant's ids live apart from other tenants'."""
        scope = "" if tenant is None else f":t:{tenant}"
        return f"{self.admission_tag(model_key)}{scope}:r:{reservation_id}"

    def settled(self, model_key: str, token: str, tenant: str | None = None) -> str:
        """Marks an acquire (by its token) as settled or released, for as long as its reservation
        would live: settling it again changes nothing."""
        scope = "" if tenant is None else f":t:{tenant}"
        return f"{self.admission_tag(model_key)}{scope}:s:{token}"

    def usage_marker(self, model_key: str, request_id: str) -> str:
        """Marks a request id as recorded (expires): recording it again counts nothing."""
        return f"{self.admission_tag(model_key)}:l:id:{request_id}"

    def ledger(self, model_key: str, period: str, index: int | None = None, tenant: str | None = None) -> str:
        """A ledger hash: ``period`` "total", or "m"/"h"/"d" with the UTC bucket ``index``."""
        scope = "" if tenant is None else f":t:{tenant}"
        suffix = "total" if period == "total" else f"{period}:{index}"
        return f"{self.admission_tag(model_key)}{scope}:l:{suffix}"

    def denials(self, model_key: str) -> str:
        """A model's refusal counters: limit name -> acquires that limit refused, all time."""
        return f"{self.admission_tag(model_key)}:l:denied"

    def ledger_tenants(self, model_key: str) -> str:
        """The set of tenants that have usage recorded on a model."""
        return f"{self.admission_tag(model_key)}:l:tenants"

    def usage_events(self, model_key: str) -> str:
        """A model's stream of sampled usage records."""
        return f"{self.admission_tag(model_key)}:events"

    # -- budgets --------------------------------------------------------------------------------

    BUDGET_MEMBER_PREFIX = "@budget:"  # a catalog member no model key can equal ('@' is not in a provider)

    def budget_member(self, tenant: str) -> str:
        """A tenant's budgets as a member of the catalog's index (beside model keys)."""
        return f"{self.BUDGET_MEMBER_PREFIX}{tenant}"

    def catalog_item(self, member: str) -> str:
        """The hash of a catalog index member: a model, or a tenant's budgets."""
        if member.startswith(self.BUDGET_MEMBER_PREFIX):
            return f"{self.catalog_tag}:budget:{member[len(self.BUDGET_MEMBER_PREFIX) :]}"
        return self.model(member)

    def budget_tag(self, tenant: str) -> str:
        return f"{{{self.namespace}:bud:{tenant}}}"

    def budget_spend(self, tenant: str, scope: str, period: str, index: int) -> str:
        """Spent and held of one budget (``scope`` "*" or a model key) in one UTC period."""
        return f"{self.budget_tag(tenant)}:s:{scope}:{period}:{index}"

    def budget_hold(self, tenant: str, reservation_id: str) -> str:
        """What one admitted request holds on its tenant's budgets."""
        return f"{self.budget_tag(tenant)}:r:{reservation_id}"

    def budget_events(self, tenant: str) -> str:
        return f"{self.budget_tag(tenant)}:events"

    def catalog_keys(self) -> tuple[str, str, str]:
        """The fixed keys every catalog write script takes first: meta, models, events."""
        return (self.meta, self.models, self.events)
