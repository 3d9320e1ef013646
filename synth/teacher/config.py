"""The teacher's configuration: which OpenAI-compatible endpoint(s) to call, how, and how much it may cost.

The recipe's ``teacher:`` block and the teacher flags of ``orchard synth`` (``synth/cli.py``, built from these
fields and their descriptions) both validate into ``TeacherConfig``; the client (``client.py``) reads it. Only
the teacher lives here (generation methods' configs are in ``synth/methods_config.py``). API keys are never part
of a config: ``api_key_env`` names the environment variable read at call time.
"""

from __future__ import annotations

import ipaddress
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from orchard.schema import Strict


def _check_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must look like http(s)://host[:port]/v1, got {v!r}")
    if parts.username or parts.password:
        # A key smuggled into the URL would end up in logs; keys belong in the env var named by api_key_env.
        raise ValueError("base_url must not contain credentials; put the key in the env var named by api_key_env")
    return v.rstrip("/")


class EndpointConfig(Strict):
    """One OpenAI-compatible server; several of them spread load and stand in for each other."""

    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 or "
                                      "https://api.openai.com/v1")
    model: str = Field(min_length=1, description="model name at that endpoint")
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1, description="env var holding the API key")
    weight: float = Field(default=1.0, gt=0, description="relative share of the load")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v):
        return _check_url(v)

    @property
    def host(self) -> str:
        """host[:port] only: what logs and provenance may show about an endpoint."""
        return urlsplit(self.base_url).netloc

    @property
    def is_local(self) -> bool:
        """Whether the server is on this machine (localhost, 0.0.0.0, 127.0.0.0/8, ::1): it needs no API key, and
        the ``auto`` transport posts to it directly."""
        name = urlsplit(self.base_url).hostname or ""
        if name in ("localhost", "0.0.0.0"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


class BudgetConfig(Strict):
    """Limits on paid work for one output: they count what its call log already paid in earlier runs, so a re-run
    with the same budget pays nothing new once it is spent. When one is reached the stage stops cleanly."""

    max_calls: Optional[int] = Field(default=None, ge=1, description="paid teacher calls for this output, earlier "
                                                                     "runs included (cache hits are free)")
    max_tokens: Optional[int] = Field(default=None, ge=1, description="prompt + completion tokens for this output, "
                                                                      "earlier runs included")
    max_cost_usd: Optional[float] = Field(default=None, gt=0, description="USD for this output, earlier runs "
                                                                          "included (needs the prices per 1,000 tokens)")
    price_per_1k_input: float = Field(default=0.0, ge=0, description="USD per 1,000 prompt tokens")
    price_per_1k_output: float = Field(default=0.0, ge=0, description="USD per 1,000 completion tokens")

    @model_validator(mode="after")
    def _cost_needs_prices(self):
        if self.max_cost_usd is not None and self.price_per_1k_input == 0 and self.price_per_1k_output == 0:
            raise ValueError("budget.max_cost_usd needs price_per_1k_input and/or price_per_1k_output to be set")
        return self


class TeacherSettings(Strict):
    """How the teacher is called, whichever endpoint it is: sampling, concurrency, retries, transport, budget.

    A recipe whose run serves its own teacher gives only these; the runner names the endpoint."""

    # Sampling defaults (a request may override them).
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=1024, ge=1)
    max_tokens_cap: Optional[int] = Field(
        default=None, ge=1, description="largest max_tokens a cut-off answer (finish_reason=length) is asked again "
                                        "with; default 4x the request's")
    seed: Optional[int] = 0

    max_concurrency: int = Field(default=8, ge=1, le=1024, description="requests in flight")
    timeout_s: float = Field(default=60.0, gt=0, description="seconds one teacher call may take before it is retried")
    max_retries: int = Field(default=6, ge=0, le=100)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_retry_after_s: float = Field(default=300.0, ge=0, description="longest Retry-After honoured as-is")
    transport: Literal["auto", "direct", "aiohttp", "httpx"] = Field(
        default="auto", description="HTTP path: 'aiohttp'/'httpx' = the openai SDK on that transport; 'direct' = "
                                    "one aiohttp POST per call (least CPU); 'auto' = direct for a teacher on this machine "
                                    "(loopback host), the SDK on aiohttp for hosted endpoints")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    response_format_json: bool = Field(
        default=False, description="ask for JSON output (response_format=json_object where the endpoint supports it)"
    )

    @model_validator(mode="after")
    def _backoff_order(self):
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


class TeacherConfig(TeacherSettings):
    """The teacher LLM: one endpoint (base_url + model) or several (endpoints), and how it is called."""

    base_url: Optional[str] = Field(default=None, description=EndpointConfig.model_fields["base_url"].description)
    model: Optional[str] = Field(default=None, description=EndpointConfig.model_fields["model"].description)
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1, description="env var holding the API key")
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v):
        return None if v is None else _check_url(v)

    @model_validator(mode="after")
    def _one_way_to_name_endpoints(self):
        if self.endpoints and (self.base_url or self.model):
            raise ValueError("give either base_url + model or endpoints: [...], not both")
        missing = [] if self.endpoints else [k for k in ("base_url", "model") if not getattr(self, k)]
        if missing:
            raise ValueError(f"teacher needs {' and '.join(missing)} (or an endpoints: list of {{base_url, model}})")
        return self

    def resolved_endpoints(self) -> list[EndpointConfig]:
        """The endpoints to use, whichever way the config named them."""
        if self.endpoints:
            return list(self.endpoints)
        return [EndpointConfig(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env)]

    def provenance(self) -> dict:
        """What rows may record about the teacher: model names and hosts, never keys."""
        eps = self.resolved_endpoints()
        return {"model": "|".join(sorted({e.model for e in eps})), "hosts": sorted({e.host for e in eps})}
