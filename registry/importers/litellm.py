"""Convert LiteLLM's price map (``model_prices_and_context_window.json``) into catalog models.

Every top-level key ends up exactly once in :attr:`LiteLLMImport.models` (aliases included)
or in :attr:`LiteLLMImport.skipped` under a reason. Prices are decoded from each number's own
text (``msgspec`` with ``float_hook=Decimal``), never through a float, and stored per 1 token
in USD. What is imported, and why (the billing rules are LiteLLM's ``generic_cost_per_token``
and ``_get_token_base_cost`` in ``litellm/litellm_core_utils/llm_cost_calc/utils.py``):

* Modes ``chat`` and ``responses`` (capability ``chat``) and ``completion`` with both
  ``input_cost_per_token`` and ``output_cost_per_token``, or a ``tiered_pricing`` table of
  per-token prices (below). Embeddings are imported too, with
  capability ``embeddings`` only, so a search by ``chat`` never returns them: input price
  required, output price from the map or 0 (an embedding call produces no output tokens).
* Only the standard tier is modelled: service-tier variants (``_batches``, ``_flex``,
  ``_priority``, ``_ultrafast``, ``_balanced``, ...), one-hour and longer cache-write prices
  (``_above_1hr``, ``_above_12hr``), ``off_peak_pricing``, regional and FedRAMP uplift
  multipliers and ``explicit_cache_read_input_token_cost`` are ignored.
* ``<price>_above_<N>k_tokens`` keys become a :class:`PriceTier` at ``N * 1000`` tokens
  (LiteLLM's ``_parse_above_token_threshold``: ``float("200") * 1000``; ``_above_<N>_tokens``
  without ``k`` is ``N`` tokens). As in LiteLLM a tier exists only where an input price is
  given; a tier without an output or cache price keeps the base one (the cache fallbacks
  are :mod:`registry.pricing`'s rule, which bills a cache price that neither the tier nor
  the base gives at the tier's input price, so a tier never mixes rates). Tiers are
  strictly above the threshold except for ``litellm_provider`` ``xai``, where LiteLLM
  compares with ``>=`` (``_INCLUSIVE_THRESHOLD_PROVIDERS``).
* ``output_cost_per_reasoning_token`` is :attr:`Cost.reasoning_output`, whenever given:
  LiteLLM bills ``completion_tokens - reasoning_tokens`` at the output price and the reasoning
  tokens at it (``generic_cost_per_token``; ``_resolve_reasoning_token_cost``, which keeps this
  base price above a ``_above_<N>k_tokens`` threshold, as :mod:`registry.pricing` does; the
  Dashscope calculator ``llms/dashscope/cost_calculator.py`` alike). Perplexity reports
  reasoning tokens apart from ``completion_tokens`` and bills them on top
  (``llms/perplexity/cost_calculator.py``); our ``output_tokens`` counts them, so the totals agree.
* ``input_cost_per_request`` is :attr:`Cost.per_request`. Only Perplexity entries have one, and
  LiteLLM's Perplexity calculator never reads it (it bills tokens, citations and searches), so
  LiteLLM's figure leaves the fee out; we keep it because Perplexity bills it on every request.
* A ``tiered_pricing`` table (LiteLLM prefers it to the flat prices) is converted when every
  range is ``{"range": [start, end], "input_cost_per_token": ...}`` with integer bounds, the
  first starting at 0 and each starting where the previous one ends. LiteLLM bills the whole
  request at one range, chosen by the prompt's tokens (cached ones included):
  ``start < prompt_tokens <= end``, and the last range above the last ``end``
  (``select_tier_for_input`` in ``llm_cost_calc/tiered_pricing.py``, used by
  ``_get_tiered_base_costs`` in ``utils.py`` and by the Dashscope calculator). So the first
  range is the base price and each later one a :class:`PriceTier` strictly above its
  ``start``; our last tier bills every larger prompt, as LiteLLM does. A range's missing (or
  0: ``tier_rate`` reads ``a or b``) cache-read or cache-write price is that range's input
  price; a missing output price is the entry's flat one (or 0); a missing reasoning price is
  the range's output price, or with no output price either the entry's flat reasoning or
  output price (``_get_tiered_reasoning_rate``). Each is written into the tier, so
  :mod:`registry.pricing` never falls back to another range's price. A prompt of 0 tokens
  selects no range and LiteLLM bills the flat prices (0 where the entry has none); we bill it
  at the first range. ``_above_<N>k_tokens`` keys beside a table are ignored, as in LiteLLM.
  Tables of another shape (``max_results_range`` for search, a gap, an overlap, an unsorted
  or not-from-0 table, a range without an input price) are skipped.
* Entries that bill text in a way :class:`Cost` cannot hold are skipped, never mispriced:
  a per-character price where LiteLLM really bills characters: only ``vertex_ai*`` chat
  models outside its per-token list (``claude``, ``llama``, ``mistral``, ``jamba``,
  ``codestral``, ``gemma``, ``gemini-2``; ``vertex_ai/cost_calculator.py::cost_router``).
  Elsewhere the per-token price is what bills text tokens and per-character, per-second or
  per-image prices only bill media, so the entry is imported. Google's ``_above_128k_tokens``
  prices are billed by a different rule (``_handle_128k_pricing``, output tier chosen by the
  completion's size), so a ``gemini`` or ``vertex_ai`` entry with a non-zero one is skipped.
* The context window is ``max_input_tokens``, else the legacy ``max_tokens`` (LiteLLM's
  ``sample_spec``: "max input tokens ... if not default to max_tokens"); where neither is
  given, or it is 0, the model is imported with ``context_window`` null.
* An alias (``alias_of``) whose target was imported becomes a model of its own with the
  target's provider, prices and limits and ``metadata["alias_of"]``; otherwise it is skipped.
* A price of 16 or more significant digits that rounds to a short number at 15 digits
  (``1.0000000000000001e-07``) is float noise: it is imported exactly as written and its
  entry listed in :attr:`LiteLLMImport.noisy_prices`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from registry.errors import ConfigError
from registry.models import MAX_TOKENS, Cost, ModelSpec, PriceTier, RateLimit, Status, validate_name

__all__ = ["LiteLLMImport", "import_litellm_map", "is_noisy"]

NOT_MODELS = frozenset({"sample_spec", "fallback_generalizations"})
INCLUSIVE_THRESHOLD_PROVIDERS = frozenset({"xai"})
_MODE_CAPABILITY = dict(chat="chat", responses="chat", completion="completion", embedding="embeddings")
_FLAGS = {
    "supports_function_calling": "function_calling",
    "supports_vision": "vision",
    "supports_response_schema": "json_mode",
    "supports_reasoning": "reasoning",
    "supports_prompt_caching": "prompt_caching",
    "supports_audio_input": "audio_input",
    "supports_audio_output": "audio_output",
    "supports_pdf_input": "pdf_input",
    "supports_web_search": "web_search",
}
_PRICES = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
}
_TIER_KEY = re.compile(rf"^({'|'.join(_PRICES)})_above_(\d+)(k?)_tokens$")
_PROVIDER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERTEX_PER_TOKEN = ("claude", "llama", "mistral", "jamba", "codestral", "gemma", "gemini-2")
_NOTE = "LiteLLM price map"
_FALLBACK = {"cached_input": "input", "cache_write": "input", "reasoning_output": "output"}


class _Skip(Exception):
    """An entry left out, with the reason it is reported under."""


@dataclass
class LiteLLMImport:
    """The result of :func:`import_litellm_map`."""

    models: list[ModelSpec]
    aliases: dict[str, str]
    skipped: dict[str, list[str]]
    noisy_prices: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able counts, and the skipped keys by reason."""
        return {
            "imported": len(self.models),
            "aliases": len(self.aliases),
            "skipped": sum(len(keys) for keys in self.skipped.values()),
            "noisy_prices": list(self.noisy_prices),
            "skipped_by_reason": {
                reason: {"count": len(keys), "keys": list(keys)} for reason, keys in sorted(self.skipped.items())
            },
        }

    def report_lines(self) -> list[str]:
        """A human report: what was imported, then one line per skip reason with its keys."""
        lines = [f"imported {len(self.models)} models ({len(self.aliases)} aliases)"]
        if self.noisy_prices:
            lines.append(
                f"{len(self.noisy_prices)} with float noise in a price, imported as written: "
                + ", ".join(self.noisy_prices)
            )
        for reason, keys in sorted(self.skipped.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"skipped {len(keys)} ({reason}): " + ", ".join(keys))
        return lines


def _decode(source: str | Path | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """A mapping as is; bytes as JSON text; a str or Path as a file to read."""
    where = "<bytes>"
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, bytes):
        where = str(source)
        try:
            source = Path(source).read_bytes()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            raise ConfigError(f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = msgspec.json.Decoder(float_hook=Decimal).decode(source)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deep to read
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a LiteLLM price map is a JSON object")
    return data


def _price(value: Any) -> Decimal:
    # A float can only come from a caller's dict: its repr is the shortest text that reads back.
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _Skip("invalid price")
    try:
        price = Decimal(repr(value) if isinstance(value, float) else value)
    except InvalidOperation:
        raise _Skip("invalid price") from None
    if not price.is_finite() or price < 0:
        raise _Skip("invalid price")
    return price


def is_noisy(price: Decimal) -> bool:
    """16+ significant digits that round at 15 to a number with fewer than 15 (float noise)."""
    if len(price.as_tuple().digits) < 16:
        return False
    rounded = Context(prec=15).plus(price).normalize()
    return len(rounded.as_tuple().digits) < 15


def _count(value: Any) -> int | None:
    """A token or request count written as an integer (``8192`` or ``8192.0``), else None."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        return None
    try:
        return int(value) if value == int(value) else None
    except (ValueError, OverflowError):  # NaN, infinity
        return None


def _text_reason(key: str, entry: Mapping[str, Any], provider: str, mode: str) -> str | None:
    """Why an entry's text is billed in a way a :class:`Cost` cannot hold, if it is."""
    if "tiered_pricing" not in entry and (
        "input_cost_per_token" not in entry or (mode != "embedding" and "output_cost_per_token" not in entry)
    ):
        if any("per_second" in name for name in entry):
            return "priced per second"
        if any("per_character" in name for name in entry):
            return "priced per character"
        return "no per-token input/output price"
    if (
        provider.startswith("vertex_ai")
        and mode != "embedding"
        and "input_cost_per_character" in entry
        and not any(marker in key for marker in _VERTEX_PER_TOKEN)
    ):
        return "priced per character"
    if (provider == "gemini" or provider.startswith("vertex_ai")) and any(
        name.endswith("_above_128k_tokens") and _price(value) for name, value in entry.items()
    ):
        return "Google above-128k prices (billed by LiteLLM's own rule)"
    return None


def _ranges(table: Any) -> list[tuple[int, Mapping[str, Any]]]:
    """A ``tiered_pricing`` table as ``(start, range)`` pairs, checked; or :class:`_Skip`."""
    if not isinstance(table, list) or not table:
        raise _Skip("tiered_pricing is not a list of token ranges")
    if not all(isinstance(item, Mapping) and "range" in item for item in table):
        raise _Skip("tiered_pricing is not a list of token ranges")
    ranges: list[tuple[int, Mapping[str, Any]]] = []
    end = 0
    for item in table:
        bounds = item["range"]
        start, stop = (_count(b) for b in bounds) if isinstance(bounds, list) and len(bounds) == 2 else (None, None)
        if start is None or stop is None or start != end or stop <= start:
            raise _Skip("tiered_pricing ranges not contiguous from 0")
        if item.get("input_cost_per_token") is None:
            raise _Skip("tiered_pricing range without an input price")
        ranges.append((start, item))
        end = stop
    return ranges


def _range_prices(item: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Decimal]:
    """What LiteLLM bills inside one range: every price spelled out (``_get_tiered_base_costs``)."""

    def given(name: str) -> Decimal | None:
        return None if item.get(name) is None else _price(item[name])

    def first(*prices: Decimal | None) -> Decimal:  # LiteLLM's ``tier.get(a) or tier.get(b)``
        return next((p for p in prices if p), Decimal(0))

    price_in = _price(item["input_cost_per_token"])
    if "output_cost_per_token" in item:
        output = _price(item["output_cost_per_token"])
        reasoning = first(given("output_cost_per_reasoning_token"), output)
    else:  # the entry's own output price stands in, and its reasoning price
        flat_output = None if entry.get("output_cost_per_token") is None else _price(entry["output_cost_per_token"])
        output = flat_output or Decimal(0)
        flat = entry.get("output_cost_per_reasoning_token")
        flat_reasoning = output if flat is None else _price(flat)
        # a range's own reasoning price falls back to its output price, here none: 0
        in_range = given("output_cost_per_reasoning_token")
        reasoning = flat_reasoning if in_range is None else in_range
    return {
        "input": price_in,
        "output": output,
        "cached_input": first(given("cache_read_input_token_cost"), price_in),
        "cache_write": first(given("cache_creation_input_token_cost"), price_in),
        "reasoning_output": reasoning,
    }


def _flat_prices(entry: Mapping[str, Any], provider: str) -> tuple[dict[str, Decimal], list[PriceTier]]:
    """Base prices and ``_above_<N>k_tokens`` tiers of an entry without a range table."""
    base = {kind: _price(entry[name]) for name, kind in _PRICES.items() if name in entry}
    base.setdefault("output", Decimal(0))  # embeddings
    if entry.get("output_cost_per_reasoning_token") is not None:
        base["reasoning_output"] = _price(entry["output_cost_per_reasoning_token"])
    found: dict[int, dict[str, Decimal]] = {}
    for name, value in entry.items():
        if match := _TIER_KEY.match(name):
            threshold = int(match[2]) * (1000 if match[3] else 1)
            found.setdefault(threshold, {})[_PRICES[match[1]]] = _price(value)
    tiers = []
    for threshold, prices in found.items():
        if "input" not in prices:  # LiteLLM keys a tier on its input price only
            continue
        prices.setdefault("output", base["output"])  # cache and reasoning prices: see registry.pricing
        inclusive = provider in INCLUSIVE_THRESHOLD_PROVIDERS
        tiers.append(PriceTier(threshold=threshold, inclusive=inclusive, **prices))
    return base, tiers


def _cost(entry: Mapping[str, Any], provider: str) -> tuple[Cost, bool]:
    """The entry's standard-tier prices, and whether any of them carries float noise."""
    if "tiered_pricing" in entry:
        ranges = [(start, _range_prices(item, entry)) for start, item in _ranges(entry["tiered_pricing"])]
        # the first range's fallbacks are registry.pricing's own: leave out what they give anyway
        first = ranges[0][1]
        base = {kind: p for kind, p in first.items() if kind not in _FALLBACK or p != first[_FALLBACK[kind]]}
        tiers = [PriceTier(threshold=start, inclusive=False, **prices) for start, prices in ranges[1:]]
    else:
        base, tiers = _flat_prices(entry, provider)
    if entry.get("input_cost_per_request") is not None:
        base["per_request"] = _price(entry["input_cost_per_request"])
    prices = [*base.values()] + [p for t in tiers for p in (t.input, t.output, t.cached_input, t.cache_write) if p]
    prices += [t.reasoning_output for t in tiers if t.reasoning_output is not None]
    noisy = any(is_noisy(p) for p in prices)
    note = f"{_NOTE}: {entry['source']}" if isinstance(entry.get("source"), str) else _NOTE
    return Cost(per=1, currency="USD", note=note[:1000], tiers=tuple(tiers), **base), noisy


def _convert(key: str, entry: Mapping[str, Any], today: date) -> tuple[ModelSpec, bool]:
    """One non-alias entry as a model, and whether a price has float noise; or :class:`_Skip`."""
    mode = entry.get("mode")
    if mode not in _MODE_CAPABILITY:
        raise _Skip(f"mode {mode}" if isinstance(mode, str) else "no mode")
    provider = entry.get("litellm_provider")
    if not isinstance(provider, str) or not _PROVIDER.match(provider):
        raise _Skip("invalid provider name")
    try:
        validate_name(key, what="id")
    except ValueError:
        raise _Skip("invalid model id") from None
    if reason := _text_reason(key, entry, provider, mode):
        raise _Skip(reason)
    # max_input_tokens, else the legacy max_tokens; neither, or 0, is unknown (null)
    window = next((entry[k] for k in ("max_input_tokens", "max_tokens") if entry.get(k) not in (None, 0)), None)
    cost, noisy = _cost(entry, provider)
    max_output = _count(entry.get("max_output_tokens"))
    capabilities = [_MODE_CAPABILITY[mode]] + [cap for f, cap in _FLAGS.items() if entry.get(f) is True]
    metadata: dict[str, Any] = {"mode": mode}
    status = Status.ACTIVE
    for name in ("source", "deprecation_date"):
        if isinstance(entry.get(name), str):
            metadata[name] = entry[name]
    try:
        if date.fromisoformat(metadata.get("deprecation_date", "")) <= today:
            status = Status.DEPRECATED
    except ValueError:
        pass
    spec = ModelSpec(
        provider=provider,
        id=key,
        context_window=None if window is None else _count(window) or window,
        max_output_tokens=max_output if max_output and max_output <= MAX_TOKENS else None,
        capabilities=tuple(capabilities),
        cost=cost,
        rate_limit=RateLimit(requests_per_minute=_count(entry.get("rpm")), tokens_per_minute=_count(entry.get("tpm"))),
        status=status,
        tags=("litellm",),
        metadata=metadata,
    )
    return spec, noisy


def _alias(key: str, target_key: Any, data: Mapping[str, Any], by_key: Mapping[str, ModelSpec]) -> ModelSpec:
    """The alias ``key`` as a copy of its imported target; or :class:`_Skip`."""
    if not isinstance(target_key, str) or target_key not in data:
        raise _Skip("alias of a missing entry")
    target = data[target_key]
    if isinstance(target, Mapping) and "alias_of" in target:  # whichever of the two comes first
        raise _Skip("alias of an alias")
    if target_key not in by_key:
        raise _Skip("alias of a skipped entry")
    try:
        validate_name(key, what="id")
    except ValueError:
        raise _Skip("invalid model id") from None
    fields = by_key[target_key].model_dump()
    fields.update(id=key, name="", metadata={**fields["metadata"], "alias_of": target_key})
    return ModelSpec.model_validate(fields)


def import_litellm_map(
    source: str | Path | bytes | Mapping[str, Any],
    *,
    today: date | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LiteLLMImport:
    """Convert LiteLLM's price map (a path, JSON bytes or text, or a decoded mapping).

    ``today`` decides which models are past their ``deprecation_date`` (default: today).
    ``progress(done, total)`` is told how many entries are converted, now and then.
    """
    data = _decode(source)
    total = len(data)
    today = today or date.today()
    by_key: dict[str, ModelSpec] = {}
    aliases: dict[str, str] = {}
    skipped: dict[str, list[str]] = {}
    noisy: list[str] = []
    pending: list[tuple[str, Any]] = []
    for done, (key, entry) in enumerate(data.items()):
        if progress is not None and done % 250 == 0:
            progress(done, total)
        try:
            if key in NOT_MODELS or not isinstance(entry, Mapping):
                raise _Skip("not a model entry")
            if "alias_of" in entry:
                pending.append((key, entry["alias_of"]))
                continue
            by_key[key], is_noisy = _convert(key, entry, today)
            if is_noisy:
                noisy.append(key)
        except _Skip as skip:
            skipped.setdefault(str(skip), []).append(key)
        except ValidationError as exc:
            where = ".".join(str(part) for part in exc.errors()[0]["loc"])
            skipped.setdefault(f"invalid {where}", []).append(key)
    for key, target_key in pending:
        try:
            spec = _alias(key, target_key, data, by_key)
        except _Skip as skip:
            skipped.setdefault(str(skip), []).append(key)
            continue
        aliases[key] = target_key
        by_key[key] = spec
    if progress is not None:
        progress(total, total)
    return LiteLLMImport(
        models=sorted(by_key.values(), key=lambda m: m.key),
        aliases=dict(sorted(aliases.items())),
        skipped={reason: sorted(keys) for reason, keys in sorted(skipped.items())},
        noisy_prices=sorted(noisy),
    )
