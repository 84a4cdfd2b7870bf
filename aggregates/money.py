"""Money: Decimal amounts with an ISO 4217 currency, never float."""

from __future__ import annotations

from decimal import Decimal

from aggregates.errors import InvalidValue

# Active ISO 4217 codes and their minor units (digits after the decimal point).
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD "
    "BTN BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP "
    "ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR "
    "JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU "
    "MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR "
    "RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
MINOR_UNITS: dict[str, int] = {
    **{c: 2 for c in _TWO.split()},
    **{c: 0 for c in _ZERO.split()},
    **{c: 3 for c in _THREE.split()},
    **{c: 4 for c in _FOUR.split()},
}

MAX_AMOUNT = Decimal("1e15")


def check_currency(currency: str) -> str | None:
    """None if the currency is an active ISO 4217 code, else the reason."""
    if currency not in MINOR_UNITS:
        return f"{currency!r} is not an ISO 4217 currency code"
    return None


def check_amount(amount: Decimal, currency: str) -> str | None:
    """None if the amount is valid money in the currency, else the reason."""
    reason = check_currency(currency)
    if reason:
        return reason
    if not amount.is_finite():
        return "amount must be a finite number"
    if amount < 0:
        return "amount must not be negative"
    if amount >= MAX_AMOUNT:
        return "amount is too large"
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > MINOR_UNITS[currency]:
        return f"{currency} has {MINOR_UNITS[currency]} decimal places"
    return None


def require_money(amount: Decimal, currency: str, *, field: str = "amount") -> None:
    """Refuse (InvalidValue naming the field) anything but valid money."""
    reason = check_currency(currency)
    if reason:
        raise InvalidValue(reason, field="currency")
    reason = check_amount(amount, currency)
    if reason:
        raise InvalidValue(reason, field=field)
