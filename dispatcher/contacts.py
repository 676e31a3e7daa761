"""Contact data: email addresses and phone numbers, validated and normalised.

Checked twice: when a service writes a user (a field-level 422) and again at send time, for
data written before a rule change or put in the store by other means.
"""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from dispatcher.errors import InvalidContact

__all__ = ["InvalidContact", "normalize_email", "normalize_phone"]


def normalize_email(value: str) -> str:
    """The normalised address (domain lower-cased, IDNA); syntax only, no DNS lookups."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidContact("email", str(exc)) from None
    return result.normalized


def normalize_phone(value: str, default_region: str | None = None) -> str:
    """The number in E.164 (``+821012345678``); without ``+``, ``default_region`` is assumed."""
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if default_region else " (write it as +<country code><number>)"
        raise InvalidContact("phone", f"{value!r} is not a phone number: {exc}{hint}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact("phone", f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
