"""Usage accounting: what each attempt cost, and totals per app, provider and model over a window.

The attempt log (`addon.state`) keeps every attempt's tokens as its provider reported them
(`addon.formats.usage`); this module prices them and adds them up. It is pure: the mitmproxy command
`detour.usage` and `python -m addon usage` both feed it rows and print what it returns.

Costs are computed when asked, from the prices in the config as it is now (`prices:` by model glob,
times the provider's `price_multiplier`), so a price added later prices past attempts too. A model
without a configured price falls back to the `genai-prices` package's bundled table when it is
installed (optional, see the README); without either its cost is unknown (None), never 0. An attempt
whose input or output count wasn't reported (a stream cut before its usage arrived) has an unknown
cost too, and so does a total that includes one.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from addon.formats.usage import Tokens
from addon.model import Config, Price
from addon.state.base import AttemptRecord

#: Windows a report accepts: a number and a unit (m, h, d), e.g. 1h, 24h, 7d, 30m.
_WINDOW = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*")
_WINDOW_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0}
#: The longest window: the log's rows carry wall times, a year covers any sensible question.
MAX_WINDOW = 366 * 86400.0
#: The keys of one `usage --json` entry, in order.
JSON_KEYS = (
    "app",
    "provider",
    "model",
    "requests",
    "failures",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
)
TOKEN_FIELDS = JSON_KEYS[5:10]
#: Outcomes that say nothing against the provider: served, or left by the client.
NOT_FAILURES = frozenset({"success", "client_gone"})


def parse_window(text: str) -> float:
    """Seconds in a report window such as `1h`, `24h` or `7d`; `ValueError` says what is accepted."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(
            f"window must be a number and a unit (m, h or d), such as 1h, 24h or 7d; got {text!r}"
        )
    seconds = float(match[1]) * _WINDOW_UNITS[match[2]]
    if not 0 < seconds <= MAX_WINDOW:
        raise ValueError(f"window must be more than 0 and at most 366d; got {text!r}")
    return seconds


def cost(record: AttemptRecord, price: Price | None, multiplier: float = 1.0) -> float | None:
    """US dollars for one attempt at `price`; None when the price or the input/output counts are
    unknown. Cache counts not reported are taken as none (their API has no such charge)."""
    if price is None or record.input_tokens is None or record.output_tokens is None:
        return None
    cache_read = price.cache_read if price.cache_read is not None else price.input
    cache_write = price.cache_write if price.cache_write is not None else price.input
    dollars = (
        record.input_tokens * price.input
        + (record.cache_read_tokens or 0) * cache_read
        + (record.cache_write_tokens or 0) * cache_write
        + record.output_tokens * price.output
    ) / 1_000_000
    return dollars * multiplier


Pricer = Callable[[AttemptRecord], float | None]


class Pricing:
    """Prices attempts with the config's `prices:`, then the optional `genai-prices` table."""

    def __init__(self, config: Config, table: Pricer | None = None) -> None:
        self.config = config
        self.table = table if table is not None else genai_prices_table()

    @property
    def knows_prices(self) -> bool:
        """Any model could have a price (the config lists some, or the price table is installed)."""
        return bool(self.config.prices) or self.table is not None

    def __call__(self, record: AttemptRecord) -> float | None:
        if not self.knows_prices:
            return None
        multiplier = self.config.price_multiplier(record.app, record.provider)
        price = self.config.price(record.model) if record.model else None
        if price is not None or self.table is None or not record.model:
            return cost(record, price, multiplier)
        found = self.table(record)
        return found * multiplier if found is not None else None


def genai_prices_table() -> Pricer | None:
    """A pricer over the `genai-prices` package's bundled snapshot (never updated over the network),
    or None when the package isn't installed."""
    try:
        import genai_prices
    except ImportError:
        return None

    @functools.lru_cache(maxsize=4096)
    def price(model: str, fresh: int, cache_read: int, cache_write: int, output: int) -> float | None:
        usage = genai_prices.Usage(
            # genai-prices counts cached tokens inside the input.
            input_tokens=fresh + cache_read + cache_write,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_tokens=output,
        )
        try:
            found = genai_prices.calc_price(usage, model_ref=model)
        except Exception:
            return None
        return float(found.total_price)

    def table(record: AttemptRecord) -> float | None:
        if record.input_tokens is None or record.output_tokens is None:
            return None
        cache_read, cache_write = record.cache_read_tokens or 0, record.cache_write_tokens or 0
        return price(record.model, record.input_tokens, cache_read, cache_write, record.output_tokens)

    return table


@dataclass
class Totals:
    """One app, provider and model's attempts in a window.

    A token total is exact or it is unknown: when an attempt that may have cost something (see
    `charged`) didn't report a count, that count's total is None in JSON, and shown as `≥ sum` in
    the table (the sum of the attempts that did report it)."""

    app: str
    provider: str
    model: str
    requests: int = 0
    failures: int = 0
    cost_usd: float | None = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    #: Per token field: the sum of the counts reported, how many reported it, how many charged
    #: attempts didn't.
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0), repr=False)
    seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0), repr=False)
    missing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0), repr=False)

    @property
    def success_rate(self) -> float:
        return (self.requests - self.failures) / self.requests if self.requests else 0.0

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def total(self, name: str) -> int | None:
        """The exact total of one token count, or None when it isn't known."""
        return self.sums[name] if self.seen[name] and not self.missing[name] else None

    def shown(self, name: str) -> str:
        """A token total for the table: exact, `≥` a partial sum, or `?`."""
        if not self.seen[name]:
            return "?"
        return f"{self.sums[name]:,}" if not self.missing[name] else f"≥{self.sums[name]:,}"

    def add(self, record: AttemptRecord, dollars: float | None, priced: bool) -> None:
        self.requests += 1
        if record.outcome not in NOT_FAILURES:
            self.failures += 1
        self.latencies.append(record.latency_ms)
        for name in TOKEN_FIELDS:
            value = getattr(record, name)
            if value is not None:
                self.sums[name] += value
                self.seen[name] += 1
            elif priced:
                self.missing[name] += 1
        if not priced:
            return
        if dollars is None or self.cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += dollars

    def as_json(self) -> dict[str, object]:
        document: dict[str, object] = {"app": self.app, "provider": self.provider, "model": self.model}
        document.update(requests=self.requests, failures=self.failures)
        document.update({name: self.total(name) for name in TOKEN_FIELDS})
        document["cost_usd"] = round(self.cost_usd, 10) if self.cost_usd is not None else None
        return document


def charged(record: AttemptRecord) -> bool:
    """The attempt may have cost something: its answer reported usage or it got an answer at all.
    An attempt that never reached a provider's model (refused connection, an error status without
    usage) costs nothing and leaves a total's cost known."""
    if record.input_tokens is not None or record.output_tokens is not None:
        return True
    return record.outcome == "success" or (record.status is not None and 200 <= record.status < 300)


def totals(records: Iterable[AttemptRecord], pricer: Pricer) -> list[Totals]:
    """Attempts added up per app, provider and model, in the order of their first attempt. A
    WebSocket handshake (101) is left out: the responses over the socket are logged one by one."""
    groups: dict[tuple[str, str, str], Totals] = {}
    for record in records:
        if record.status == 101:
            continue
        key = (record.app, record.provider, record.model)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Totals(*key)
        priced = charged(record)
        group.add(record, pricer(record) if priced else None, priced)
    return list(groups.values())


def flow_summary(tokens: Tokens | None, dollars: float | None) -> str:
    """A served flow's usage for its mitmweb comment: `1,234 in / 56 out tokens, $0.0123`."""
    if tokens is None or (tokens.input is None and tokens.output is None):
        return "tokens not reported"
    fresh = _count(tokens.input)
    cached = (tokens.cache_read or 0) + (tokens.cache_write or 0)
    into = f"{fresh} in" + (f" (+{cached:,} cached)" if cached else "")
    text = f"{into} / {_count(tokens.output)} out tokens"
    return text + (f", {dollars_text(dollars)}" if dollars is not None else ", cost unknown")


def dollars_text(dollars: float | None) -> str:
    """Dollars as people read them: cents from $1 up, three significant digits below (one request
    often costs a fraction of a cent)."""
    if dollars is None:
        return "unknown"
    if dollars == 0 or dollars >= 1:
        return f"${dollars:,.2f}"
    decimals = 2 - math.floor(math.log10(dollars))
    return f"${dollars:.{decimals}f}"


def pruned_note(first_logged: float) -> str:
    """Says that the window reaches past the oldest attempt the log still keeps."""
    when = datetime.fromtimestamp(first_logged, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"note: the attempt log starts at {when}, inside this window; older attempts were pruned "
        "(attempt_log_limit) and are not counted"
    )


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


def table(groups: list[Totals]) -> str:
    """The totals as an aligned text table, one line per app/provider/model, and a total line."""
    header = (
        "app",
        "provider",
        "model",
        "requests",
        "ok",
        "p50",
        "input",
        "cached",
        "output",
        "reasoning",
        "cost",
    )
    lines = [header]
    for g in groups:
        p50 = f"{g.p50_ms:.0f}ms" if g.p50_ms is not None else "-"
        lines.append(
            (
                g.app,
                g.provider,
                g.model or "?",
                str(g.requests),
                f"{g.success_rate:.0%}",
                p50,
                g.shown("input_tokens"),
                _cached(g),
                g.shown("output_tokens"),
                g.shown("reasoning_tokens"),
                dollars_text(g.cost_usd),
            )
        )
    if not groups:
        return "no attempts in this window"
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    numeric = range(3, len(header))
    rendered = [
        "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    every_cost = [g.cost_usd for g in groups]
    known = [c for c in every_cost if c is not None]
    total = f"total: {sum(g.requests for g in groups)} requests, cost {dollars_text(sum(known))}"
    if len(known) < len(every_cost):
        total += " + unknown (models without a price, or usage not reported)"
    return "\n".join(line.rstrip() for line in rendered) + "\n" + total


def _cached(g: Totals) -> str:
    """Cache reads and writes in one column."""
    read, write = g.shown("cache_read_tokens"), g.shown("cache_write_tokens")
    if "?" in (read, write) and read == write:
        return "?"
    partial = any(g.missing[n] for n in ("cache_read_tokens", "cache_write_tokens"))
    total = g.sums["cache_read_tokens"] + g.sums["cache_write_tokens"]
    return f"≥{total:,}" if partial else f"{total:,}"
