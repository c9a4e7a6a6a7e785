"""Operators for VanceAI: one job, a resumable batch, its shards, a credit check and a usage report.

Import them from here (DAG files and the docs do). Each lives in a module of its own:
:mod:`~vance_provider.operators.submit` (one job), :mod:`~vance_provider.operators.batch` (a
batch), :mod:`~vance_provider.operators.shards` (a source split into shard files), :mod:`~vance_provider.operators.credits` (the credit check and report) and
:mod:`~vance_provider.operators.links` (the "VanceAI outputs" extra link).

Every operator reads configuration and context, calls one verb of :mod:`vance_provider.core`
through :class:`~vance_provider.hooks.vanceai.VanceAIHook`, and returns small plain data for
XCom (counts, credits, a few output URLs - never a token).
"""

from vance_provider.operators.batch import FAILURE_POLICIES, VanceAIEnhanceOperator, credit_budget
from vance_provider.operators.credits import VanceAICreditCheckOperator, VanceAICreditReportOperator
from vance_provider.operators.links import LINK_XCOM_KEY, VanceAIDestinationLink, console_url, outputs_url
from vance_provider.operators.shards import VanceAIShardOperator
from vance_provider.operators.submit import JOB_STATE_KEY, VanceAISubmitJobOperator

__all__ = [
    "FAILURE_POLICIES",
    "JOB_STATE_KEY",
    "LINK_XCOM_KEY",
    "VanceAICreditCheckOperator",
    "VanceAICreditReportOperator",
    "VanceAIDestinationLink",
    "VanceAIEnhanceOperator",
    "VanceAIShardOperator",
    "VanceAISubmitJobOperator",
    "console_url",
    "credit_budget",
    "outputs_url",
]
