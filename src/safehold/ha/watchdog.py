"""systemd's watchdog, fed by the HA loop: a process whose loop keeps deciding and acting is not stuck.

The ping comes from the loop each mode runs every check interval (:data:`MAIN_LOOPS`, see ``HaAgent.start``),
after a cycle that went well, in the event loop that also answers the requests: a blocked event loop, a hung
step or a loop that fails cycle after cycle (its database gone) stops the pings, and systemd restarts the
service after ``WatchdogSec``.  A timer thread would keep pinging through all of that.  With several workers
each pings the supervisor, which pings systemd while every serving worker does (``safehold.systemd``).
"""

from __future__ import annotations

from safehold import systemd

#: the loop of each mode (HaAgent's methods): a primary's or secondary's heartbeat, a read-only server's peer
#: check, a fenced server's watch; one of them runs in every worker, whatever its mode
MAIN_LOOPS = frozenset({"heartbeat", "check_peers", "fenced_watch"})


def cycle_went_well(loop: str) -> None:
    """``loop`` (a step's name) decided and acted without an error."""
    if loop in MAIN_LOOPS:
        systemd.alive()
