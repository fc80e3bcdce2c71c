"""The cache behaviours of the replay: how an engine may reuse what it holds for a new
turn's prompt, each as one prepared call, and the check that it did exactly that.

* ``prefix``: the longest common prefix only (what every engine does): a plain
  ``first_token``; it must reuse ``min(common prefix, prompt - 1)`` tokens.
* ``shift``: find the span the policy removed between the cached and the new tokens
  (:func:`kvcache_exp.chat.tripwire.removed_span`), drop its cells and move the rest
  back into place (the in-process engine's ``shifted_first_token``, the shift cure's
  operation), then evaluate what is new; without such a span, as ``prefix``.
* ``server_reuse``: llama-server's own ``--cache-reuse`` (``n_cache_reuse`` in the
  request): the server looks for chunks itself, so it must reuse at least the common
  prefix, and its own count says how much more.

The engine is asked for what it can do by its capabilities, never by its class. What
the cache held is tracked here, independently of the engine, with how many times each
cached cell was shifted, so that quality after 1, 2, 3, ... shifts of the same cells can
be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcache_exp.chat.columns import PREFIX, SERVER_REUSE, SHIFT
from kvcache_exp.chat.source import Message
from kvcache_exp.chat.tripwire import removed_span
from kvcache_exp.engines.base import Capability, Engine, EngineError, PreparedCall
from kvcache_exp.measure import protocol
from kvcache_exp.prefix import common_prefix

#: What each behaviour needs the engine to be able to do.
NEEDS: dict[str, Capability | None] = {
    PREFIX: None,
    SHIFT: Capability.CACHE_SURGERY,
    SERVER_REUSE: Capability.SERVER_CACHE_REUSE,
}


def check_engine(engine: Engine, cache: str) -> None:
    """Refuse a behaviour the engine cannot do, before anything is measured."""
    need = NEEDS[cache]
    if need is not None and need not in engine.capabilities:
        how = {
            SHIFT: "llama.cpp's cache operations in-process (engine llama_cpp_python)",
            SERVER_REUSE: "llama-server's --cache-reuse (its native API)",
        }[cache]
        raise EngineError(f"cache behaviour {cache} needs {how}; the {engine.name} engine has not")


@dataclass
class Held:
    """What the engine's cache holds, by the replay's own account: the tokens, and for
    each cell how many shifts it has been through (None: unknown, a server's chunks)."""

    tokens: list[int] = field(default_factory=list)
    shifts: list[int] | None = field(default_factory=list)

    def extend(self, tokens: list[int]) -> None:
        """Cells evaluated afresh (never shifted)."""
        self.tokens += tokens
        if self.shifts is not None:
            self.shifts += [0] * len(tokens)


@dataclass(frozen=True)
class Plan:
    """One prepared call and what it must do: reuse ``expected`` cached tokens (exactly,
    or at least when not ``exact``), after removing the cache positions ``span``."""

    call: PreparedCall
    expected: int
    exact: bool = True
    span: tuple[int, int] | None = None

    def held_after(self, held: Held, prompt: list[int]) -> Held:
        """What the cache holds once the call has run (its prompt, and each cell's
        shifts: one more for the cells moved back)."""
        if held.shifts is None or not self.exact:
            return Held(list(prompt), None)
        if self.span is None:
            shifts = held.shifts[: self.expected]
        else:
            start, end = self.span
            moved = held.shifts[end : end + self.expected - start]
            shifts = held.shifts[:start] + [s + 1 for s in moved]
        return Held(list(prompt), shifts + [0] * (len(prompt) - self.expected))


def plan(
    engine: Engine,
    cache: str,
    held: Held,
    prompt: list[int],
    min_tokens: int,
    chat: list[Message] | None = None,
) -> Plan:
    """The timed call of ``cache`` for ``prompt``, prepared (nothing of it runs yet).

    With ``chat`` the server renders those messages itself (its chat completions), and
    ``prompt`` is the tokens it renders them to."""
    prefix = min(common_prefix(held.tokens, prompt), len(prompt) - 1)
    if chat is not None:
        reuse = min_tokens if cache == SERVER_REUSE else 0
        messages = [m.as_dict() for m in chat]
        call = engine.chat_first_token(messages, len(prompt), n_cache_reuse=reuse)  # type: ignore[attr-defined]
        return Plan(call, prefix, exact=cache != SERVER_REUSE)
    if cache == SHIFT:
        found = removed_span(held.tokens, prompt, min_tokens)
        if found is not None:
            start, end, kept = found
            call = engine.shifted_first_token(prompt, removed=(start, end))  # type: ignore[attr-defined]
            return Plan(call, kept, span=(start, end))
    if cache == SERVER_REUSE:
        call = engine.first_token(prompt, n_cache_reuse=min_tokens)  # type: ignore[call-arg]
        return Plan(call, prefix, exact=False)
    return Plan(engine.first_token(prompt), prefix)


def check_call(
    measured: protocol.CallMeasurement,
    plan_: Plan,
    prompt: int,
    pos_max: int | None,
) -> list[str]:
    """Why the timed call's counts contradict what the cache must have done."""
    notes = []
    reused = measured.result.cached_tokens
    if reused is None:
        notes.append("the engine reported no reused-token count")
    elif plan_.exact and reused != plan_.expected:
        notes.append(f"the engine reused {reused} cached tokens, expected {plan_.expected}")
    elif not plan_.exact and reused < plan_.expected:
        notes.append(
            f"the engine reused {reused} cached tokens, less than the {plan_.expected} of the "
            "common prefix"
        )
    if reused is not None and measured.eval_tokens != prompt - reused:
        notes.append(
            f"the engine evaluated {measured.eval_tokens} tokens, but the prompt's {prompt} "
            f"less the {reused} reused leave {prompt - reused}"
        )
    if measured.completion_tokens != 1:
        notes.append(f"the call sampled {measured.completion_tokens} tokens, expected 1")
    if pos_max is not None and pos_max != prompt - 1:
        notes.append(f"the cache ends at position {pos_max} after the call, expected {prompt - 1}")
    held = measured.result.extra.get("tokens_cached")
    if held is not None and held != prompt:
        notes.append(f"the server holds {held} tokens after the call, expected {prompt}")
    return notes


def check_cells(engine: Engine, prompt: int) -> list[str]:
    """After a shift, the cells themselves: the cache must hold one cell at each position
    0 .. prompt - 1 (read from llama.cpp's state, untimed), which the highest position
    alone does not prove (moved cells could overlap the removed ones' positions)."""
    read = getattr(engine, "cache_positions", None)
    positions = read() if read is not None else None
    if positions is None or sorted(positions) == list(range(prompt)):
        return []
    return [
        f"after the shift the cache holds {len(positions)} cells at positions "
        f"{min(positions, default=-1)}..{max(positions, default=-1)}, not one at each of "
        f"0..{prompt - 1}"
    ]


def decoded(generation: protocol.CallMeasurement) -> int:
    """Generated tokens a generation evaluated (so the cache holds them): all when the
    model stopped itself, all but the last when the length limit stopped it."""
    n = generation.completion_tokens
    return max(n - (1 if generation.finish_reason == "length" else 0), 0)


def check_generation(generation: protocol.CallMeasurement, max_tokens: int) -> list[str]:
    """Why a reply's generation contradicts the design: it reused the whole prompt
    (evaluating at most its last token again, as a server does) and stayed in its limit."""
    notes = []
    again = generation.eval_tokens - decoded(generation)
    if again not in (0, 1):
        notes.append(
            f"the reply's generation evaluated {again} of its prompt's tokens again, expected "
            "at most 1 (the timed call cached the prompt)"
        )
    if generation.completion_tokens > max_tokens:
        notes.append(
            f"the reply took {generation.completion_tokens} tokens, more than {max_tokens}"
        )
    return notes
