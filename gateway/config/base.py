"""What every site-file model shares: unknown keys are errors, ids have one form."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A site-file model: a key it does not know is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


Id = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", min_length=1, max_length=64)
