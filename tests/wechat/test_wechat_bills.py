"""The bill format: unquoted, every data field opened by a backtick; the announced hash and its type."""

from __future__ import annotations

import hashlib

import pytest

from wechat.bills import check_bill_hash, check_hash_type, parse_bill_csv, split_data
from wechat.errors import WeChatIntegrityError, WeChatUnavailable

HEADER = "交易时间,商户订单号,商品名称,商户数据包,订单金额"
SUMMARY_HEADER = "总交易单数,订单总金额"


def bill(*rows: str, summary: str = "`1,`50.00") -> bytes:
    return ("\r\n".join([HEADER, *rows, SUMMARY_HEADER, summary]) + "\r\n").encode("utf-8")


def test_a_comma_inside_a_product_name_does_not_shift_columns():
    # given: a product name with commas (and a space after one), as WeChat writes it: unquoted
    content = bill("`2024-05-01 10:00:00,`ORD1,`Noodles, beef, large,`attach,x,`50.00")
    # when
    [row], summary = parse_bill_csv(content)
    # then
    assert row == {
        "交易时间": "2024-05-01 10:00:00",
        "商户订单号": "ORD1",
        "商品名称": "Noodles, beef, large",
        "商户数据包": "attach,x",
        "订单金额": "50.00",
    }
    assert summary == {"总交易单数": "1", "订单总金额": "50.00"}


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("Tea`time", "Tea`time"),  # a backtick inside a field
        ("`quoted`", "`quoted`"),  # a field that itself starts with a backtick keeps it
        ("trailing,", "trailing,"),  # a comma right before the delimiter
        (",leading", ",leading"),
        ('"quoted, like CSV"', '"quoted, like CSV"'),  # quotes mean nothing in this format
        ("", ""),  # an empty field is a lone backtick
    ],
)
def test_backticks_commas_and_quotes_inside_data(name, parsed):
    [row], _ = parse_bill_csv(bill(f"`2024-05-01 10:00:00,`ORD1,`{name},`,`50.00"))
    assert row["商品名称"] == parsed and row["商户数据包"] == "" and row["订单金额"] == "50.00"


def test_a_row_that_cannot_be_split_unambiguously_is_refused_with_its_line():
    # a product name containing the delimiter itself (",`") would shift every column after it
    content = bill("`2024-05-01 10:00:00,`ORD1,`weird,`name,`,`50.00")
    with pytest.raises(WeChatUnavailable) as info:
        parse_bill_csv(content)
    assert info.value.code == "UNPARSEABLE_RESPONSE" and "line 2 has 6 fields, its header 5" in info.value.message


@pytest.mark.parametrize(
    "row",
    [
        "2024-05-01 10:00:00,ORD1,goods,,50.00",  # no backticks: not WeChat's data format
        "`2024-05-01 10:00:00,`ORD1,`goods,`50.00",  # a field missing
    ],
)
def test_malformed_rows_are_refused(row):
    with pytest.raises(WeChatUnavailable):
        parse_bill_csv(bill(row))


def test_bill_without_summary_or_not_utf8_is_refused():
    with pytest.raises(WeChatUnavailable):
        parse_bill_csv(f"{HEADER}\r\n".encode())
    with pytest.raises(WeChatUnavailable):
        parse_bill_csv(bill("`2024-05-01 10:00:00,`ORD1,`g,`,`50.00").replace(b"ORD1", b"\xff\xfe"))


def test_split_data_keeps_empty_last_field():
    assert split_data("`a,`,`") == ["a", "", ""]


def test_hash_types():
    content = bill("`2024-05-01 10:00:00,`ORD1,`g,`,`50.00")
    check_bill_hash(content, hashlib.sha1(content).hexdigest(), "SHA1")  # noqa: S324
    check_bill_hash(content, hashlib.sha256(content).hexdigest().upper(), "SHA256")
    with pytest.raises(WeChatIntegrityError):
        check_bill_hash(content, hashlib.sha256(content).hexdigest(), "SHA1")
    for bad in (None, "", "MD5", "sha1"):
        with pytest.raises(WeChatIntegrityError) as info:
            check_hash_type(bad)
        assert info.value.code == "UNEXPECTED_HASH_TYPE"
