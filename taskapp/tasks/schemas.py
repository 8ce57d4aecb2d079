"""Request and response bodies of the task routes (also the source of the OpenAPI document)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from typing_extensions import TypeAliasType

# Named aliases: the OpenAPI document gets one schema of each (components.schemas.Priority and
# .TaskSort) that every use refers to, so a generated client has one enum type of each, with
# member names of its own (x-enum-varnames: "-created_at" is not a name a language can use).
Priority = TypeAliasType(
    "Priority",
    Annotated[
        Literal["low", "medium", "high"],
        Field(description="How urgent a task is: low < medium < high."),
    ],
)
TaskSort = TypeAliasType(
    "TaskSort",
    Annotated[
        Literal["-created_at", "created_at", "due_date", "-due_date", "priority", "-priority"],
        Field(
            description="An order of the task list; a leading - reverses it.",
            json_schema_extra={
                "x-enum-varnames": [
                    "CREATED_AT_DESC",
                    "CREATED_AT",
                    "DUE_DATE",
                    "DUE_DATE_DESC",
                    "PRIORITY",
                    "PRIORITY_DESC",
                ]
            },
        ),
    ],
)


def _as_utc(value: datetime) -> datetime:
    # A naive datetime is taken as UTC; converting an extreme offset can leave datetime's range.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date is out of range") from None


def _date_time_text(value: Any) -> Any:
    # JSON carries dates as strings; refuse pydantic's lax reading of numbers as Unix timestamps.
    if isinstance(value, (int, float)):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


# A date, optionally a time and an offset; a "+" decoded from a query string as a space is put back.
_QUERY_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+ -]\d{2}:?\d{2})?)?"
)
_SPACE_OFFSET = re.compile(r"(:\d{2}(?:\.\d+)?) (\d{2}:?\d{2})$")


def _query_date_text(value: Any) -> Any:
    # Only ISO 8601 text: refuse pydantic's lax reading of digits as a Unix timestamp.
    if not isinstance(value, str) or not _QUERY_DATE.fullmatch(value):
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2030-01-31T17:00:00Z")
    return _SPACE_OFFSET.sub(r"\1+\2", value)


# ECMAScript's \s: the whitespace of the JSON Schema pattern below, so the published schema and
# this check agree on which titles are blank (Python's str.strip() would also strip e.g. U+0085).
_BLANK = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def _stripped_non_blank(value: str) -> str:
    value = value.strip(_BLANK)
    if not value:
        raise ValueError("must not be blank")
    return value


# Lengths apply to the title as sent (as the schema says); the stored title is stripped.
Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    Field(json_schema_extra={"pattern": r"\S"}),
    AfterValidator(_stripped_non_blank),
]
Description = Annotated[str, StringConstraints(max_length=5000)]
DueDate = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_as_utc)]
QueryDate = Annotated[datetime, BeforeValidator(_query_date_text), AfterValidator(_as_utc)]


class TaskCreate(BaseModel):
    """A new task."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Write the report",
                    "description": "Quarterly figures",
                    "priority": "high",
                    "due_date": "2030-01-31T17:00:00Z",
                }
            ]
        },
    )

    title: Title
    description: Description = ""
    completed: StrictBool = False
    priority: Priority = "medium"
    due_date: DueDate | None = None


NOT_SENT: Any = None  # typed Any: the default of fields whose type excludes None


def _without_defaults(schema: dict[str, Any]) -> None:
    # A field left out of a PATCH is left unchanged: it has no default value to publish (and the
    # NOT_SENT default, None, is not even of the field's type; due_date's null clears the date).
    schema["minProperties"] = 1
    schema["examples"] = [{"completed": True, "priority": "high"}]
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class TaskUpdate(BaseModel):
    """Changes to a task: any subset of its fields, at least one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_without_defaults,
    )

    # Unsent fields default to NOT_SENT and changes() leaves them out; a sent null fails their type
    # (only due_date may be null: it clears the date).
    title: Title = NOT_SENT
    description: Description = NOT_SENT
    completed: StrictBool = NOT_SENT
    priority: Priority = NOT_SENT
    due_date: DueDate | None = None

    @model_validator(mode="after")
    def _at_least_one_field(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError("at least one field is required")
        return self

    def changes(self) -> dict[str, Any]:
        """Only the fields the client sent."""
        return self.model_dump(exclude_unset=True)


class ListQuery(BaseModel):
    """Paging, filtering and ordering of a task list."""

    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is an error, not ignored

    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=10, ge=1, le=100)
    completed: bool | None = Field(default=None, description="only done (true) or open (false)")
    priority: Priority | None = Field(default=None, description="only tasks of this priority")
    due_before: QueryDate | None = Field(
        default=None,
        description="only tasks due strictly before this ISO 8601 date-time (UTC without an "
        "offset); tasks without a due date never match",
    )
    due_after: QueryDate | None = Field(
        default=None,
        description="only tasks due strictly after this ISO 8601 date-time (UTC without an "
        "offset); tasks without a due date never match",
    )
    sort: TaskSort = Field(
        default="-created_at",
        description="order of the items: newest first (-created_at, the default), oldest first, "
        "by due date (tasks without one come first with due_date, last with -due_date) or by "
        "priority (low < medium < high); equal values keep the order of creation (reversed "
        "with a leading -)",
    )


class ActivityQuery(BaseModel):
    """How many feed items to return."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)


class TaskOut(BaseModel):
    """A task; datetimes are UTC ISO 8601 with a Z suffix."""

    id: str
    title: str
    description: str
    completed: bool
    priority: Priority
    due_date: datetime | None
    created_at: datetime
    updated_at: datetime


class TaskPage(BaseModel):
    """One page of tasks, newest first."""

    items: list[TaskOut]
    page: int
    per_page: int
    total: int


class TaskStats(BaseModel):
    """Counts over all of a user's tasks; overdue = open with a due date in the past."""

    total: int
    completed: int
    open: int
    overdue: int


class ActivityItem(BaseModel):
    """One action on a task."""

    id: str
    action: Literal["created", "updated", "deleted"]
    task_id: str
    title: str
    at: datetime


class ActivityFeed(BaseModel):
    """A user's recent actions, newest first."""

    items: list[ActivityItem]
