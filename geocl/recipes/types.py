"""Value types shared by the recipe schema and the command options."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticKnownError


def _integer_not_bool(value: Any) -> Any:
    # bool is an int to Python (and to pydantic's lax mode), but `seeds=True` is a
    # mistake, not 1
    if isinstance(value, bool):
        raise PydanticKnownError("int_type")
    return value


def _number_not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticKnownError("float_type")
    return value


#: An integer that refuses true/false (pydantic would read them as 1/0).
Integer = Annotated[int, BeforeValidator(_integer_not_bool)]
#: A number (int or float given, float kept) that refuses true/false.
Number = Annotated[float, BeforeValidator(_number_not_bool)]
#: A finite number (no nan or inf), e.g. an augmentation magnitude.
FiniteNumber = Annotated[Number, Field(allow_inf_nan=False)]
#: A probability.
Probability = Annotated[Number, Field(ge=0.0, le=1.0)]
