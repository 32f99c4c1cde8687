"""The API's models on the wire: one ``SpecError`` naming the field, from whatever pydantic
found wrong. Shared by the ModelDeployment (``api``) and ModelPolicy (``policy_api``) models.
Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

Location = tuple[str | int, ...]
Model = TypeVar("Model", bound=BaseModel)


class SpecError(ValueError):
    """An object that cannot be accepted, with the offending field's path."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field_path = field_path
        self.message = message


class FieldRuleError(ValueError):
    """A cross-field rule broken inside one model; ``field`` is relative to that model."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def wire_config(alias: Callable[[str], str]) -> ConfigDict:
    """The models' configuration: frozen, strict, ``alias`` names on the wire (either name
    accepted in Python), unknown fields refused."""
    return ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=alias,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


def parse_wire(
    obj: object,
    model: type[Model],
    *,
    alias: Callable[[str], str],
    pattern_message: Callable[[Location, object], str],
    kind: str = "",
    prefix: tuple[str, ...] = (),
) -> Model:
    """Validate ``obj`` (camelCase keys) as ``model``, found at ``prefix`` in the object, or
    raise one SpecError (``spec_error_from``). ``kind`` names the object ("a ModelPolicy")
    when it is not a mapping at all; without it the error names the path.
    """
    if not isinstance(obj, dict):
        subject = f"{kind} must" if kind else "must"
        raise SpecError(format_path(prefix), f"{subject} be a mapping, not {type(obj).__name__}")
    try:
        return model.model_validate(obj, by_alias=True, by_name=False)
    except ValidationError as error:
        raise spec_error_from(
            error, root=model, alias=alias, pattern_message=pattern_message, prefix=prefix
        ) from None


def spec_error_from(
    error: ValidationError,
    *,
    root: type[BaseModel],
    alias: Callable[[str], str],
    pattern_message: Callable[[Location, object], str],
    prefix: tuple[str, ...] = (),
) -> SpecError:
    """Condense a pydantic ValidationError into one SpecError about its first problem.

    ``root`` is the model validated (at ``prefix`` in the object), ``alias`` its wire names,
    ``pattern_message`` says in words what a patterned field accepts.
    """
    problems = error.errors(include_url=False)
    first = problems[0]
    location: Location = prefix + tuple(first["loc"])
    message = first["msg"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldRuleError):
        location = (*location, *(part for part in cause.field.split(".") if part))
        message = cause.message
    elif first["type"] == "extra_forbidden":
        allowed = allowed_fields(location[len(prefix) :], root, alias)
        message = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "string_pattern_mismatch":
        message = pattern_message(location, first["input"])
    elif first["type"] == "value_error" and message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return SpecError(format_path(location), message)


def allowed_fields(
    location: Location, root: type[BaseModel], alias: Callable[[str], str]
) -> list[str]:
    """The wire names allowed in the object that holds the last element of ``location``."""
    current: type[BaseModel] | None = root
    for part in location[:-1]:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        field = next(
            (info for name, info in current.model_fields.items() if alias(name) == part), None
        )
        current = None if field is None else model_in(field.annotation)
    if current is None:
        return []
    return [alias(name) for name in current.model_fields]


def model_in(annotation: object) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Foo``, ``list[Foo]``, ``Foo | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = model_in(argument)
        if found is not None:
            return found
    return None


def format_path(location: Location) -> str:
    """Render a location as ``spec.hardware.tolerations[0].operator``."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path
