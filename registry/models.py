"""Typed definitions of the catalog: a model, its prices and its rate limits.

Everything that enters the catalog passes through these pydantic models, so a bad value is
refused at the edge with the path of the field that is wrong (``cost.input``,
``models[3].rate_limit.tokens_per_minute``) and before anything is written to Redis.

Prices are :class:`~decimal.Decimal` and are read from the text of a JSON number or string,
never through a float. Field names follow the seed registry's TypeScript API in snake_case.
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

import semver
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from registry.currencies import ISO_4217

__all__ = [
    "Capability",
    "CatalogFile",
    "Cost",
    "ModelSpec",
    "PriceTier",
    "RateLimit",
    "Status",
    "parse_model_key",
    "validate_name",
]

MAX_ID_LENGTH = 256
MAX_TAG_LENGTH = 64
MAX_TOKENS = 10**9


def validate_name(value: str, *, what: str = "name", max_length: int = MAX_ID_LENGTH) -> str:
    """Refuse what could break a Redis key's structure; allow what real model names use.

    Model names contain ``/``, ``:``, ``.``, ``@`` and ``-`` (``anthropic.claude-3-haiku-
    20240307-v1:0``, ``accounts/fireworks/models/llama-v3``), so those pass. Refused: an empty
    or overlong name, braces (they would change a key's cluster hash tag), whitespace, control
    or format characters, and lone surrogates (what Python makes of bytes that are not UTF-8:
    no key can hold one).
    """
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{what} is {len(value)} characters long, at most {max_length} allowed")
    for ch in value:
        if ch in "{}":
            raise ValueError(f"{what} {value!r} contains a brace, which would break Redis keys")
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"):
            raise ValueError(f"{what} {value!r} contains whitespace or a control character (U+{ord(ch):04X})")
    return value


def _model_id(value: str) -> str:
    return validate_name(value, what="id")


def _tag(value: str) -> str:
    return validate_name(value, what="tag", max_length=MAX_TAG_LENGTH)


def _semver(value: str) -> str:
    try:
        semver.Version.parse(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])") from exc
    return value


def _currency(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().upper()
        if value not in ISO_4217:
            raise ValueError(f"unknown currency {value!r}: expected an ISO 4217 code such as USD")
    return value


ProviderName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
    Field(
        description="Provider name: lower-case letters, digits, '.', '_' and '-' "
        "(openai, anthropic, llama.cpp, bedrock, any other).",
        examples=["openai", "anthropic", "llama.cpp"],
    ),
]
ModelId = Annotated[
    str,
    AfterValidator(_model_id),
    Field(description="The provider's own model name; no braces, whitespace or control characters."),
]
Tag = Annotated[str, AfterValidator(_tag)]


def validate_tenant(value: str) -> str:
    """A tenant name: a :func:`validate_name` without ``:`` either. A tenant's keys on a model
    are ``...:t:<tenant>:<kind>:...``; with a colon, tenant ``x:r:y``'s window would be the key
    of tenant ``x``'s record for request ``y:w:rpm``."""
    validate_name(value, what="tenant", max_length=MAX_TAG_LENGTH * 2)
    if ":" in value:
        raise ValueError(f"tenant {value!r} contains ':', which separates the parts of Redis keys")
    return value


TenantName = Annotated[str, AfterValidator(validate_tenant)]
CapabilityName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Price = Annotated[
    Decimal,
    Field(ge=0, le=10**9, allow_inf_nan=False, description="Exact decimal price per `per` tokens."),
]
Currency = Annotated[str, BeforeValidator(_currency), Field(description="ISO 4217 code.")]
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Limit = Annotated[int | None, Field(ge=0, le=10**12)]


class Capability(StrEnum):
    """Well-known capability names. Capabilities are an open set; these are spelled for you."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"
    FUNCTION_CALLING = "function_calling"
    VISION = "vision"
    STREAMING = "streaming"
    JSON_MODE = "json_mode"
    REASONING = "reasoning"
    PROMPT_CACHING = "prompt_caching"
    AUDIO_INPUT = "audio_input"
    AUDIO_OUTPUT = "audio_output"
    PDF_INPUT = "pdf_input"
    WEB_SEARCH = "web_search"


class Status(StrEnum):
    """Life cycle of a model in the catalog."""

    ACTIVE = "active"
    BETA = "beta"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class PriceTier(_Strict):
    """Higher prices that apply to a whole request once its prompt passes a threshold.

    Providers bill long prompts at higher rates (``input_cost_per_token_above_200k_tokens``):
    when the prompt's input tokens exceed ``threshold`` the whole request, output included, is
    billed at this tier's prices. ``inclusive`` makes the tier apply from exactly ``threshold``
    tokens (xAI's rule) rather than strictly above it (everyone else's). A cached-input or
    cache-write price left out falls back to the base price of the same kind.
    """

    threshold: Annotated[int, Field(ge=1, le=MAX_TOKENS, description="Prompt tokens.")]
    inclusive: bool = False
    input: Price
    output: Price
    cached_input: Price | None = None
    cache_write: Price | None = None
    reasoning_output: Price | None = None

    def applies_to(self, prompt_tokens: int) -> bool:
        """Whether a prompt of ``prompt_tokens`` input tokens is billed at this tier."""
        if self.inclusive:
            return prompt_tokens >= self.threshold
        return prompt_tokens > self.threshold


class Cost(_Strict):
    """Per-token prices of a model, in ``currency`` per ``per`` tokens.

    ``input`` is the price of prompt tokens that are neither cache reads nor cache writes,
    ``cached_input`` of prompt tokens read from the provider's prompt cache, ``cache_write`` of
    prompt tokens written to it; either of the last two left out is billed as ``input``.
    ``reasoning_output`` prices the reasoning part of the output tokens where a provider bills
    it apart (else ``output``), and ``per_request`` is a flat fee per request (in
    ``currency``, not divided by ``per``).
    """

    input: Price
    output: Price
    currency: Currency = "USD"
    per: Literal[1, 1000, 1000000] = Field(
        default=1_000_000, description="The number of tokens the prices are for: 1, 1000 or 1000000."
    )
    note: str | None = Field(default=None, max_length=1000)
    cached_input: Price | None = None
    cache_write: Price | None = None
    reasoning_output: Price | None = None
    per_request: Price | None = None
    tiers: tuple[PriceTier, ...] = ()

    @field_validator("tiers")
    @classmethod
    def _tiers_sorted_and_unique(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        ordered = tuple(sorted(tiers, key=lambda t: t.threshold))
        thresholds = [t.threshold for t in ordered]
        if len(set(thresholds)) != len(thresholds):
            raise ValueError("two tiers have the same threshold")
        return ordered

    @property
    def is_free(self) -> bool:
        prices: list[Decimal | None] = [
            self.input,
            self.output,
            self.cached_input,
            self.cache_write,
            self.reasoning_output,
            self.per_request,
        ]
        for tier in self.tiers:
            prices += [tier.input, tier.output, tier.cached_input, tier.cache_write, tier.reasoning_output]
        return not any(prices)


class RateLimit(_Strict):
    """The provider's quota for this model, shared by the whole fleet. ``None`` is unlimited.

    Three token limits, for the providers' two ways of counting: ``tokens_per_minute`` counts
    input plus output tokens (OpenAI's TPM); ``input_tokens_per_minute`` and
    ``output_tokens_per_minute`` count them apart (Anthropic's ITPM and OTPM). A model may set
    any of them; a request must fit in each one set.

    Prompt caching: an acquire reserves every input token (the cache split is not known yet);
    a settle given ``cached_input_tokens`` moves ``input_tokens_per_minute`` to the input less
    those cache reads, as Anthropic's ITPM does not count them (cache writes it does), while
    ``tokens_per_minute`` keeps every input token, as OpenAI's TPM does.
    """

    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None
    input_tokens_per_minute: Limit = Field(
        default=None,
        description="Input tokens in any 60 s window (Anthropic's ITPM): an acquire reserves the request's "
        "input tokens, settle corrects them to the real input less the prompt tokens read from the cache "
        "(`cached_input_tokens`, which Anthropic's ITPM does not count; cache writes count); null: no limit.",
    )
    output_tokens_per_minute: Limit = Field(
        default=None,
        description="Output tokens in any 60 s window (Anthropic's OTPM): an acquire reserves the request's "
        "max output tokens, settle corrects them to the real output; null: no limit.",
    )
    requests_per_day: Limit = None
    note: str | None = Field(default=None, max_length=1000)


class ModelSpec(_Strict):
    """One model of the catalog, keyed by ``provider:id``."""

    provider: ProviderName
    id: ModelId
    name: str = Field(default="", max_length=200, description="Display name; defaults to the id.")
    version: Annotated[str, AfterValidator(_semver)] = "1.0.0"
    capabilities: tuple[CapabilityName, ...] = ()
    context_window: TokenCount | None = Field(
        description="Prompt tokens the model takes; null where the provider does not publish it "
        "(the field must still be given)."
    )
    max_output_tokens: TokenCount | None = None
    cost: Cost
    rate_limit: RateLimit = RateLimit()
    status: Status = Status.ACTIVE
    tags: tuple[Tag, ...] = ()
    tenant_limits: dict[TenantName, RateLimit] = Field(
        default_factory=dict,
        description="Limits of each tenant on this model, on top of the model's own; "
        "'*' applies to every tenant without an entry of its own.",
    )
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Free-form: endpoint, file name and quantisation of local models, and so on.",
    )

    @field_validator("capabilities", "tags")
    @classmethod
    def _sorted_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(values)))

    @model_validator(mode="after")
    def _default_name(self) -> ModelSpec:
        if not self.name:
            object.__setattr__(self, "name", self.id)
        return self

    @property
    def key(self) -> str:
        """``provider:id``, the model's key in the catalog."""
        return f"{self.provider}:{self.id}"

    @property
    def semver(self) -> semver.Version:
        return semver.Version.parse(self.version)


class CatalogFile(_Strict):
    """The JSON config file: ``{"models": [...]}``, validated by ``config/models.schema.json``."""

    schema_: str | None = Field(default=None, alias="$schema")
    models: list[ModelSpec]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique_keys(self) -> CatalogFile:
        seen: dict[str, int] = {}
        for index, model in enumerate(self.models):
            if model.key in seen:
                # Raised with the entry's location (models[i].id), not at the root, so that the
                # message names the entry and field like any other error of the file.
                error = PydanticCustomError(
                    "duplicate_key",
                    "duplicate key '{key}': models[{first}] already defines it",
                    {"key": model.key, "first": seen[model.key]},
                )
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [InitErrorDetails(type=error, loc=("models", index, "id"), input=model.id)],
                )
            seen[model.key] = index
        return self


def parse_model_key(key: str) -> tuple[str, str]:
    """Split ``provider:id`` at the first colon (ids may contain colons themselves)."""
    provider, sep, model_id = key.partition(":")
    if not sep or not provider or not model_id:
        raise ValueError(f"model key {key!r} is not of the form provider:id")
    return provider, model_id
