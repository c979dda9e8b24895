"""LossLog: which callers have been told that a sandbox's state was lost.

Every loss (a kernel restart, a replaced container, a retired session) gets a generation
number. A call notes the generation when it arrives; when its result is ready, that result
tells every loss the call did not itself witness and that either happened after it arrived
or was never told to anyone (its result was discarded: the caller had cancelled). So each
caller that runs after state was lost, and did not see it happen, reads why.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from enclave_tools.execution import Execution
from enclave_tools.turns import Turn

__all__ = ["STATE_LOST", "Loss", "LossLog"]

STATE_LOST = (
    "All variables, imports and loaded data from earlier runs are gone; "
    "re-run any setup code before continuing"
)
"""What every note of a loss ends with: what is gone and what to do."""


@dataclass(eq=False)
class Loss:
    """One loss of the sandbox's state and the note that tells it."""

    generation: int
    note: str
    told: bool = False


class LossLog:
    """The losses of one sandbox that a waiting or future call may still need to hear of."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._losses: list[Loss] = []
        self.generation = 0
        """How many losses this sandbox has had."""

    def record(self, note: str, witness: Turn | None = None) -> None:
        """Record a loss; ``witness`` is the call whose own result (or error) tells it, if any."""
        with self._lock:
            self.generation += 1
            loss = Loss(self.generation, note)
            self._losses.append(loss)
            if witness is not None:
                witness.witnessed.append(loss)

    def tell(self, turn: Turn, execution: Execution | None, oldest_seen: int | None) -> None:
        """Put on ``execution`` (the result of ``turn``) the notes of the losses its caller
        has not heard of; with no execution (the call raised an error that says everything
        was lost), count them as told. Losses nobody can still need are forgotten."""
        with self._lock:
            others = [
                loss
                for loss in self._losses
                if loss not in turn.witnessed and (loss.generation > turn.seen or not loss.told)
            ]
            if execution is not None and others:
                execution.notes[:0] = [loss.note for loss in others]
                execution.state_lost = True
            turn.carried = [*turn.witnessed, *others]
            if not turn.cancelled:
                for loss in turn.carried:
                    loss.told = True
            turn.seen = self.generation
            floor = turn.seen if oldest_seen is None else min(oldest_seen, turn.seen)
            self._losses = [loss for loss in self._losses if not loss.told or loss.generation > floor]

    def cancel(self, turn: Turn) -> None:
        """Mark ``turn`` cancelled by its caller: whatever its result told, nobody read."""
        with self._lock:
            turn.cancelled = True
            for loss in turn.carried:
                loss.told = False
                if loss not in self._losses:
                    self._losses.append(loss)
            self._losses.sort(key=lambda loss: loss.generation)

    def __len__(self) -> int:
        return len(self._losses)
