"""Blocking helpers for the command line and notebooks: set and read an account's budgets."""

from __future__ import annotations

import asyncio
from typing import Any

from .account import open_account
from .models import BudgetState


def set_budget(
    name: str,
    credits: float,
    period: str = "total",
    *,
    api_base_url: str,
    api_key: Any,
    store_url: str | None = None,
) -> BudgetState:
    """Create or change the account's budget ``name``: ``credits`` per ``period`` (``day``,
    ``month``, ``total``), in the store ``store_url`` (default: ``$VANCE_ACCOUNT_STORE`` or ``local``)."""

    async def run() -> BudgetState:
        async with open_account(api_base_url, api_key, store_url) as account:
            return await account.set_budget(name, credits, period)

    return asyncio.run(run())


def get_budgets(*, api_base_url: str, api_key: Any, store_url: str | None = None) -> list[BudgetState]:
    """Every budget of the account: credits, period, spent, reserved and remaining."""

    async def run() -> list[BudgetState]:
        async with open_account(api_base_url, api_key, store_url) as account:
            return await account.budgets()

    return asyncio.run(run())


def delete_budget(name: str, *, api_base_url: str, api_key: Any, store_url: str | None = None) -> bool:
    """Remove the account's budget ``name``; False if there was none."""

    async def run() -> bool:
        async with open_account(api_base_url, api_key, store_url) as account:
            return await account.delete_budget(name)

    return asyncio.run(run())
