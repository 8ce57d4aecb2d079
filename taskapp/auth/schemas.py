"""Request and response bodies of the auth routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _email(value: str) -> str:
    # test_environment: also accept the reserved ".test" domain, used by test suites and fuzzers.
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


Email = Annotated[
    str, Field(max_length=254, json_schema_extra={"format": "email"}), AfterValidator(_email)
]


#: The example account of the document: "Try it out" registers it, then logs in with it.
EXAMPLE_CREDENTIALS: dict[str, Any] = {
    "email": "ada@example.com",
    "password": "correct horse battery",
}


class Registration(BaseModel):
    """A new account."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_CREDENTIALS]})

    email: Email
    password: Annotated[str, Field(min_length=8, max_length=1024)]


class Credentials(BaseModel):
    """Login credentials; the email is not format-checked, a wrong one simply fails to log in."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_CREDENTIALS]})

    email: Annotated[str, Field(min_length=1, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshIn(BaseModel):
    """A refresh token from the login or refresh answer (single use)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"refresh_token": "the refresh_token of a login"}]},
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


#: The example of a password change: the example account's password, then a new one.
EXAMPLE_PASSWORD_CHANGE = {
    "current_password": EXAMPLE_CREDENTIALS["password"],
    "new_password": "correct horse battery staple",
}


class PasswordChange(BaseModel):
    """The current password and the new one."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [EXAMPLE_PASSWORD_CHANGE]}
    )

    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Annotated[str, Field(min_length=8, max_length=1024)]


class UserOut(BaseModel):
    """A registered account."""

    id: str
    email: str


class AccountOut(BaseModel):
    """An account with its current role."""

    id: str
    email: str
    role: Literal["user", "admin"]


class TokenOut(BaseModel):
    """A token pair of one login.

    Send the access token as ``Authorization: Bearer <access_token>`` (valid ``expires_in``
    seconds); exchange the refresh token (single use) for a new pair at
    ``POST /api/v1/auth/refresh``.
    """

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_token: str
