"""The engine's parameters: home, radii and filter thresholds. Pydantic only, no numpy, so
settings can build and validate them in a process that never computes (submit).
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class NamedPlace(BaseModel):
    """A place the user named: a stay whose centre lies within `radius_m` of it is there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    # A radius of .inf would make every stay this place, as nan would none: both are typos.
    radius_m: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 100.0


class EngineParams(BaseModel):
    """Home, radii and filter thresholds: everything `analyze` needs besides the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home_latitude: Annotated[float, Field(ge=-90, le=90)]
    home_longitude: Annotated[float, Field(ge=-180, le=180)]
    exit_radius_km: Annotated[float, Field(gt=0)] = 0.5
    """Leaving this radius starts a trip (`AWAY_THRESHOLD_KM`)."""
    enter_radius_km: Annotated[float, Field(gt=0)] = 0.3
    """Coming back inside this smaller radius ends it, so boundary jitter makes no trips."""
    max_accuracy_m: Annotated[float, Field(gt=0)] | None = 200.0
    """Fixes reporting a worse accuracy are dropped; None keeps them all."""
    max_speed_kmh: Annotated[float, Field(gt=0)] | None = 500.0
    """A fix reached and left faster than this is a jump and dropped; None disables."""
    max_gap_s: Annotated[float, Field(gt=0)] = 1800.0
    """Longer gaps between observed fixes are unknown time."""
    jitter_radius_m: Annotated[float, Field(ge=0)] = 120.0
    """A fix this close to where the device was over its last `jitter_fixes` fixes adds no
    path (a fix reporting a worse accuracy must move by its accuracy); 0 disables."""
    jitter_fixes: Annotated[int, Field(ge=1, le=1000)] = 10
    drop_duplicates: bool = True
    null_island_invalid: bool = True
    """Treat latitude 0, longitude 0 (a common placeholder for "no fix") as invalid."""
    stay_min_minutes: Annotated[float, Field(gt=0)] = 5.0
    """A stay lasts at least this long (`STAY_MIN_MINUTES`): a traffic stop is no stay."""
    stay_radius_m: Annotated[float, Field(gt=0)] = 100.0
    """A stay's fixes keep within this of its centre, plus each fix's reported accuracy
    (`STAY_RADIUS_M`)."""
    stay_max_silence_hours: Annotated[float, Field(gt=0)] = 12.0
    """A silence up to this long between fixes at the same place is part of the stay
    (`STAY_MAX_SILENCE_HOURS`): phones at rest go quiet."""
    places: tuple[NamedPlace, ...] = ()
    """Named places (`PLACES_FILE`); home is always a place."""
    context_s: Annotated[float, Field(ge=0)] = 86400.0
    """How far beyond the window fixes are used as context (see `read_range`)."""

    @model_validator(mode="after")
    def _radii_ordered(self) -> Self:
        if self.enter_radius_km >= self.exit_radius_km:
            raise ValueError(
                f"enter_radius_km ({self.enter_radius_km}) must be smaller than "
                f"exit_radius_km ({self.exit_radius_km})"
            )
        return self
