"""The batch's credit ledger: what it has spent, taken over and committed, against its budget and
the account's balance. Every credit figure of a run goes through here, so the budget rule is
written once."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.models import credits_text

SLACK = 1e-9  # credits are floats: a sum equal to the budget is within it


@dataclass
class CreditLedger:
    """One run's credits.

    - ``spent``: charges this run paid for.
    - ``taken_over``: results an earlier run had paid for, collected by this one (they count
      against the budget, as the run answers for them, but not against the balance, which was
      read after they were paid).
    - ``committed``: estimates of jobs submitted and not yet charged.
    - ``available``: the balance when the run began (``inf`` until read).
    """

    budget: float | None = None
    spent: float = 0.0
    taken_over: float = 0.0
    committed: float = 0.0
    available: float = float("inf")

    def commit(self, estimate: float) -> None:
        """A job is about to be created: its estimate is held until it is charged or released."""
        self.committed += estimate

    def release(self, estimate: float) -> None:
        """A committed job was not created, failed (refunded) or was canceled."""
        self.committed -= estimate

    def reprice(self, old: float, new: float) -> None:
        """The service priced a committed job (a video): its figure replaces our estimate."""
        self.committed += new - old

    def charge(self, estimate: float, cost: float, *, taken_over: bool = False) -> None:
        """A committed job was collected: its estimate gives way to what it cost."""
        self.committed -= estimate
        if taken_over:
            self.taken_over += cost
        else:
            self.spent += cost

    def resumed(self, estimate: float, *, reserved_by_service: bool) -> None:
        """Jobs resumed from the manifest will be paid in this run: committed. A service that
        reserves credits at creation (the Open API) has already taken them out of the balance."""
        self.committed += estimate
        if reserved_by_service:
            self.available += estimate

    def over_budget(self, extra: float = 0.0) -> bool:
        """Whether what is spent, taken over and committed (plus ``extra``) passes the budget."""
        return (
            self.budget is not None
            and self.spent + self.taken_over + self.committed + extra > self.budget + SLACK
        )

    def refusal(self, estimate: float) -> str | None:
        """Why one more job of ``estimate`` credits may not start, if it may not."""
        if self.over_budget(estimate):
            return self.budget_reached()
        if self.spent + self.committed + estimate > self.available + SLACK:
            return "the balance would not cover more jobs"
        return None

    def budget_reached(self) -> str:
        return f"the credit budget of {credits_text(self.budget or 0.0)} is reached"
