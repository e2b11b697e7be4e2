"""The robot agent's settings: where the platform is, who the robot is, how to upload."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """Read from WAMFLEET_AGENT_* variables; the agent holds a robot token, never storage keys."""

    model_config = SettingsConfigDict(env_prefix="WAMFLEET_AGENT_", extra="ignore")

    api_url: str = Field(default="http://127.0.0.1:8600", description="Base URL of the platform API.")
    robot_id: str | None = Field(default=None, description="This robot's id (as registered).")
    token: SecretStr | None = Field(default=None, description="This robot's token from registration.")
    spool_dir: Path = Field(default=Path("wamfleet-spool"), description="Where episodes wait for upload.")
    bandwidth_limit: int = Field(default=0, ge=0, description="Upload cap in bytes/s; 0: no cap.")
    retention_s: float = Field(
        default=0.0, ge=0, description="Keep uploaded episodes this long before deleting them; 0: at once."
    )
    max_attempts: int = Field(default=8, ge=1, description="Tries per request before leaving it for later.")
    backoff_base_s: float = Field(default=0.5, gt=0, description="First retry waits up to this long.")
    backoff_max_s: float = Field(default=30.0, gt=0, description="Longest wait between retries.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request network timeout.")
    poll_s: float = Field(default=2.0, gt=0, description="How often `agent run` looks for new episodes.")
