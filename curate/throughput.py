"""How fast a panel screened, and what a full MMStar-scale screen would take at that rate.

Why its own module: ``screen`` and ``audit`` print the same lines, the report and
``bench/audit.py`` quote the same projection, and none of them should need the audit's
orchestration (or its imports) to format one member's timing. Inputs are the screen's
``MemberReport`` timing dicts (``asked``, ``cached``, ``model_seconds``, ``samples_per_s``,
``concurrent``); everything here is a pure function of them.
"""

from __future__ import annotations

from typing import Any

MMSTAR_POOL = (22_401, 8)  # MMStar screened 22,401 candidates with 8 LLMs: the scale a projection is quoted at
#: Backends whose members run at the same time as the others (a remote server each); in-process ones take turns.
CONCURRENT_BACKENDS = ("openai",)


def ran_concurrently(throughput: dict[str, Any], model: dict[str, Any]) -> bool:
    """Did this member run alongside the others? The screen's own flag when it records one, else its backend."""
    if throughput.get("concurrent") is not None:
        return bool(throughput["concurrent"])
    return model.get("backend") in CONCURRENT_BACKENDS


def throughput_line(name: str, t: dict[str, Any]) -> str:
    """One member's model work in a run (``MemberReport`` timing): what ``screen`` and ``audit`` print."""
    rate = f"{t['samples_per_s']:.2f} samples/s" if t.get("samples_per_s") else "no fresh model calls"
    along = ", alongside the other members" if t.get("concurrent") else ""
    return f"{name}: {t['asked']:,} questions asked in {t['model_seconds']:,.0f} s ({rate}), {t['cached']:,} from the cache{along}"


def projection(members: dict[str, dict[str, Any]], *, items: int = MMSTAR_POOL[0], n_members: int = MMSTAR_POOL[1]) -> dict[str, Any] | None:
    """Hours that ``items`` x ``n_members`` would take at the rate this run measured (None without fresh calls).

    Why: a run on a laptop is a sample of the throughput a full screen needs. ``samples_per_s``
    is one member's rate (the panel's fresh answers over its members' model seconds), so
    ``hours_in_turn`` (``n_members`` members one after another on one machine) and
    ``hours_parallel`` (each on its own endpoint, all at once) carry over to an OpenAI-compatible
    endpoint by replacing that rate with the endpoint's own (``bench/audit.py --endpoint``).

    ``hours_this_panel``: ``items`` with this run's own members at their own rates, run as the
    screen runs them -- in-process members take turns (one lane: their times add up), members
    flagged ``concurrent`` (remote endpoints) each run in their own lane at the same time, so
    the time is the slowest lane's, not the sum. ``panel_samples_per_s`` is the run's answers
    over that wall time. ``members`` maps a member to its throughput dict
    (``summary["members"][m]["throughput"]``), or the member rows holding it.
    """
    timings = {name: m.get("throughput", m) for name, m in members.items()}
    asked = sum(t.get("asked") or 0 for t in timings.values())
    seconds = sum(t.get("model_seconds") or 0.0 for t in timings.values())
    if not asked or seconds <= 0:
        return None
    rate = asked / seconds
    hours = items * n_members / rate / 3600
    timed = {n: t for n, t in timings.items() if (t.get("asked") or 0) > 0 and (t.get("model_seconds") or 0) > 0}
    concurrent = sorted(n for n, t in timed.items() if t.get("concurrent"))
    in_turn = [t for n, t in timed.items() if n not in concurrent]
    wall = max([sum(t["model_seconds"] for t in in_turn)] + [timed[n]["model_seconds"] for n in concurrent])
    lanes = [sum(items * t["model_seconds"] / t["asked"] for t in in_turn)] + [items * timed[n]["model_seconds"] / timed[n]["asked"] for n in concurrent]
    return {
        "items": items, "members": n_members, "samples_per_s": rate, "hours_in_turn": hours, "hours_parallel": hours / n_members,
        "panel_members": len(timed), "concurrent_members": concurrent,
        "panel_samples_per_s": asked / wall if wall > 0 else None, "hours_this_panel": max(lanes) / 3600,
    }


def projection_line(p: dict[str, Any]) -> str:
    """The projection as ``audit`` prints it (this panel's own time when it has several members)."""
    line = (
        f"projection at {p['samples_per_s']:.2f} samples/s: {p['items']:,} items x {p['members']} members "
        f"= {p['hours_in_turn']:,.1f} h in turn, {p['hours_parallel']:,.1f} h on {p['members']} parallel endpoints"
    )
    k = p.get("panel_members") or 0
    if k > 1 and p.get("hours_this_panel") is not None:
        conc = len(p.get("concurrent_members") or [])
        how = "taking turns" if conc == 0 else ("all at once" if conc == k else f"{conc} remote alongside {k - conc} in turn")
        line += f"; this panel's {k} members ({how}): {p['hours_this_panel']:,.1f} h"
    return line
