"""The weighting a slice's header states: T1 or T2, from its repetition, echo and inversion times.

A series description can be wrong: the competition's training data has a study whose spinal points lie on its
"Sagittal T1" series while its "Sagittal T2/STIR" carries none. The acquisition timings in a header say which
contrast the scanner made, whatever the description says. Only clear cases answer:

- T1-weighted spin echo: short repetition and short echo (TR <= 1000 ms, TE <= 30 ms);
- T2-weighted: long repetition and long echo (TR >= 1500 ms, TE >= 60 ms), or STIR, an inversion recovery with a
  short inversion time (100-250 ms) that nulls fat, which the competition files under "Sagittal T2/STIR".

Anything else answers None and the description stands: no timings (an anonymiser may remove them), another
inversion recovery (a T1 FLAIR has TR about 2000 ms and TI about 800 ms), a gradient echo, a proton density.
"""

from __future__ import annotations

from typing import Any

T1_MAX_TR_MS, T1_MAX_TE_MS = 1000.0, 30.0
T2_MIN_TR_MS, T2_MIN_TE_MS = 1500.0, 60.0
STIR_TI_MS = (100.0, 250.0)


def _ms(header: Any, tag: str) -> float | None:
    """A timing tag in ms, None when absent, empty or not a positive number."""
    try:
        value = float(getattr(header, tag, None))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def weighting_of(header: Any) -> str | None:
    """ "t1", "t2" or None (not clear, see the module doc) for a pydicom dataset (or any object with the tags)."""
    tr, te, ti = (_ms(header, tag) for tag in ("RepetitionTime", "EchoTime", "InversionTime"))
    if ti is not None:  # inversion recovery: only STIR's short inversion is judged
        short_inversion = STIR_TI_MS[0] <= ti <= STIR_TI_MS[1]
        return "t2" if short_inversion and (tr is None or tr >= T2_MIN_TR_MS) else None
    if tr is None or te is None:
        return None
    if tr <= T1_MAX_TR_MS and te <= T1_MAX_TE_MS:
        return "t1"
    if tr >= T2_MIN_TR_MS and te >= T2_MIN_TE_MS:
        return "t2"
    return None


def timings(header: Any) -> str:
    """The header's timings as a reader would quote them: "TR 600 ms, TE 12 ms" (and TI where there is one)."""
    found = [(tag, _ms(header, tag)) for tag in ("RepetitionTime", "EchoTime", "InversionTime")]
    short = {"RepetitionTime": "TR", "EchoTime": "TE", "InversionTime": "TI"}
    return ", ".join(f"{short[tag]} {value:g} ms" for tag, value in found if value is not None)
