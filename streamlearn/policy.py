"""The base of every policy: one area's configuration, defined beside the code it configures.

A policy is a frozen pydantic model with its defaults and bounds, composed into
:class:`streamlearn.settings.Settings` as a section (``join``, ``training``, ``monitor``,
``api``), so that ``STREAMLEARN_JOIN__WINDOW_S`` sets ``settings.join.window_s``. Settings that
were documented before the sections existed keep their flat names: ``FLAT`` maps a field to the
name it answers to at the top level (``attribution_window_s``, so ``STREAMLEARN_ATTRIBUTION_
WINDOW_S`` or ``attribution_window_s = 30`` in a configuration file still work).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    FLAT: ClassVar[dict[str, str]] = {}
    """Field name -> the flat name it also answers to (without the ``STREAMLEARN_`` prefix)."""
