"""How far a cure's next-token distributions are from the exact answer's.

The exact answer for a prompt with A removed is a full recompute of it (the miss). A
cure that keeps B's cache computes the same prompt from states computed under other
positions or other context, so its next-token distributions differ. These figures
compare them position by position, as llama.cpp's perplexity tool does for a quantized
model against its base: KL divergence (mean and 99th percentile), top-1 agreement,
the RMS of the change in the probability of the reference token, and the position
where greedy generation first diverges.

Inputs are log-probabilities, one row per position (shape ``positions x vocab``);
everything here is plain numpy, so that it can be checked against hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Quality:
    """A cure's distributions against the reference's, over ``positions`` positions.

    ``first_divergence`` is the index, among the continuation's positions, of the first
    one whose most likely token differs from the reference's there: where greedy
    generation through the cure would first leave the reference's (the number of
    continuation positions when it never does).
    """

    kl_mean: float
    kl_p99: float  # NaN with fewer than P99_MIN_POSITIONS positions (it would be the max)
    kl_max: float
    top1_agreement: float
    rms_dp: float
    first_divergence: int | float  # NaN: no comparison
    positions: int | float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def as_columns(self) -> dict[str, float]:
        """The cures CSV's quality columns."""
        columns = self.as_dict()
        columns["quality_positions"] = columns.pop("positions")
        return columns


#: No comparison (the hit, which has nothing to compare): every figure empty, none made up.
NAN_QUALITY = Quality(*([math.nan] * 7))

#: A 99th percentile needs this many values to be more than the largest one.
P99_MIN_POSITIONS = 100


def kl_divergence(ref_logp: np.ndarray, cure_logp: np.ndarray) -> np.ndarray:
    """KL(reference || cure) at each position, in nats."""
    p = np.exp(ref_logp)
    return np.sum(p * (ref_logp - cure_logp), axis=-1)


def compare(
    ref_logp: np.ndarray,
    cure_logp: np.ndarray,
    next_tokens: np.ndarray,
    n_continuation: int,
) -> Quality:
    """Compare two sets of next-token log-probabilities.

    Args:
        ref_logp: The reference's log-probabilities, ``positions x vocab``.
        cure_logp: The cure's, same shape, same positions.
        next_tokens: The reference token that follows each position (the prompt's own
            next token, then the reference's greedy continuation).
        n_continuation: How many of the last positions predict the continuation; the
            first divergence is counted among them.
    """
    if ref_logp.shape != cure_logp.shape or ref_logp.shape[0] != len(next_tokens):
        raise ValueError(
            f"shapes differ: reference {ref_logp.shape}, cure {cure_logp.shape}, "
            f"{len(next_tokens)} next tokens"
        )
    if ref_logp.shape[0] == 0:
        return NAN_QUALITY
    kl = kl_divergence(ref_logp, cure_logp)
    top1 = np.argmax(ref_logp, axis=-1) == np.argmax(cure_logp, axis=-1)
    rows = np.arange(len(next_tokens))
    dp = np.exp(cure_logp[rows, next_tokens]) - np.exp(ref_logp[rows, next_tokens])
    # Teacher-forced on the same tokens, the cure's greedy choice first leaves the
    # reference's where their most likely tokens first differ. (Against the reference's
    # generated tokens instead, even a second full recompute would "diverge": generation
    # evaluates one token at a time, whose kernels round differently from a batch.)
    tail = slice(len(next_tokens) - n_continuation, None)
    differ = ~top1[tail]
    diverged = np.flatnonzero(differ) if n_continuation else np.array([], dtype=int)
    return Quality(
        kl_mean=float(np.mean(kl)),
        kl_p99=float(np.percentile(kl, 99)) if kl.size >= P99_MIN_POSITIONS else math.nan,
        kl_max=float(np.max(kl)),
        top1_agreement=float(np.mean(top1)),
        rms_dp=float(np.sqrt(np.mean(dp**2))),
        first_divergence=int(diverged[0]) if diverged.size else n_continuation,
        positions=int(ref_logp.shape[0]),
    )
