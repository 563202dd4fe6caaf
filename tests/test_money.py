"""money.py: one rounding rule (down), exact yuan parsing, no floats near money."""

from decimal import Decimal

import pytest

from money import MAX_FEN, MoneyError, check_fen, format_yuan, parse_yuan, share


@pytest.mark.parametrize(
    ("amount_fen", "rate_bps", "expected"),
    [
        (20_000, 500, 1_000),  # 5 % of 200 yuan = 10 yuan
        (20_000, 1_000, 2_000),  # 10 %
        (5_000, 800, 400),  # cashback story: 8 % of a 50-yuan order = 4 yuan
        (999, 500, 49),  # 49.95 rounds down
        (1, 9_999, 0),  # 0.9999 fen rounds down to nothing
        (199, 50, 0),
        (10_001, 3_333, 3_333),  # 3333.3333 → 3333
        (0, 500, 0),
        (12_345, 0, 0),
        (100, 20_000, 200),  # double-rebate windows may exceed 100 %
        (MAX_FEN, 10_000, MAX_FEN),
    ],
)
def test_share_rounds_down(amount_fen, rate_bps, expected):
    assert share(amount_fen, rate_bps) == expected


def test_share_never_rounds_up_near_the_boundary():
    # 3 fen at 33.33 % is 0.9999 fen: down, never up
    assert share(3, 3_333) == 0
    assert share(3, 3_334) == 1


@pytest.mark.parametrize("amount", [-1, -20_000, True, False, 1.0, 1.5, Decimal("10"), "100", None, MAX_FEN + 1])
def test_share_refuses_bad_amounts(amount):
    with pytest.raises(MoneyError):
        share(amount, 500)


@pytest.mark.parametrize("rate", [-1, True, 5.0, 0.05, "500", None, Decimal("500")])
def test_share_refuses_bad_rates(rate):
    with pytest.raises(MoneyError):
        share(10_000, rate)


def test_money_error_is_a_value_error_with_a_code():
    with pytest.raises(ValueError) as info:
        share(-1, 1)
    assert info.value.code == "invalid_amount"


def test_check_fen():
    assert check_fen(0) == 0
    assert check_fen(MAX_FEN) == MAX_FEN
    with pytest.raises(MoneyError):
        check_fen(0, allow_zero=False)
    with pytest.raises(MoneyError):
        check_fen(MAX_FEN + 1)
    with pytest.raises(MoneyError):
        check_fen(True)


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("0.01", 1),
        ("`12.30", 1_230),  # WeChat bills prefix every field with a backtick
        ("12.3", 1_230),
        ("12", 1_200),
        ("12.", 1_200),
        ("200.00", 20_000),
        ("¥0.5", 50),
        ("1,234.56", 123_456),
        (" 7.07 ", 707),
        ("-3.20", -320),  # refunds in bills are negative
        ("0", 0),
        ("0.000", 0),
        ("12.300", 1_230),  # trailing zeros are exact
        ("100000000000.00", MAX_FEN),
    ],
)
def test_parse_yuan_is_exact(text, fen):
    result = parse_yuan(text)
    assert result == fen
    assert type(result) is int


@pytest.mark.parametrize(
    "text",
    [
        "0.005",
        "12.345",
        "abc",
        "NaN",
        "nan",
        "sNaN",
        "inf",
        "-Infinity",
        "",
        "   ",
        "`",
        "1.2.3",
        "1e2",  # exponents are not yuan strings
        "1e-999999999",  # would underflow to 0 fen
        "9e999999999",  # would overflow the decimal context
        "1.0000000000000000000000000001",  # would be rounded by a 28-digit context
        "1_000",
        "١٢",  # non-ASCII digits
        "100000000000.01",  # one fen over MAX_FEN
        "9" * 5_000,
    ],
)
def test_parse_yuan_refuses(text):
    with pytest.raises(MoneyError):
        parse_yuan(text)


@pytest.mark.parametrize(
    ("fen", "text"),
    [(0, "0.00"), (1, "0.01"), (10, "0.10"), (1_230, "12.30"), (123_456, "1234.56"), (-5, "-0.05"), (-1_230, "-12.30")],
)
def test_format_yuan(fen, text):
    assert format_yuan(fen) == text


@pytest.mark.parametrize("fen", [0, 1, 99, 100, 1_230, 123_456_789, -1, -12_345])
def test_format_then_parse_round_trips(fen):
    assert parse_yuan(format_yuan(fen)) == fen


@pytest.mark.parametrize("value", [1.5, True, "100", None, Decimal("1")])
def test_format_yuan_refuses_non_int(value):
    with pytest.raises(MoneyError):
        format_yuan(value)
