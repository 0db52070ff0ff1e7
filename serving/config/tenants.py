"""Tenants: the teams sharing the platform. Defined once here; route resolution reads their route choices and the
policy layer their allow lists, limits and audit choice (both from the gateway's one tenant table)."""

from __future__ import annotations

from pydantic import Field

from serving.config.admission import Priority
from serving.config.base import StrictModel
from serving.config.policies import LimitsConfig


class TenantConfig(StrictModel):
    """A team sharing the platform: its routes, allowed models, limits and audit choice. API keys map to tenants."""

    routes: dict[str, str] = Field(default_factory=dict, description="Model name -> route for this tenant.")
    default_route: str | None = Field(None, description="Route for any model name this tenant sends.")
    models: list[str] | None = Field(
        None, description="Model names (groups or routes) this tenant may use; default: all. Others get a 403."
    )
    limits: LimitsConfig | None = Field(None, description="Overrides of policies.limits for this tenant.")
    audit_prompts: bool = Field(False, description="Put prompt text in this tenant's audit lines (opt-in).")
    cache: bool = Field(True, description="Use the response cache (when policies.cache is on).")
    priority: Priority = Field(
        "interactive",
        description="Admission class of this tenant's requests; a request may lower it with the priority header.",
    )
