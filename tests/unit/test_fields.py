"""domain.fields: the per-field validators and their exact messages (reference §3.3, §3.3.1).

Booleans are strict (deviations #1); every other message is the original API's text.
"""

from __future__ import annotations

import pytest

from imagesvc.domain import fields
from imagesvc.domain.fields import FieldError

INVALID = "Invalid value."
INVALID_URL = "Enter a valid URL."
NOT_INTEGER = "Enter a whole number."
NOT_BOOLEAN = "Must be a valid boolean."
NOT_STRING = "Not a valid string."
REQUIRED = "This field is required."


def messages_of(validator, value) -> list[str]:
    with pytest.raises(FieldError) as caught:
        validator(value)
    return caught.value.messages


# --- safe strings (alias, version, desc) ----------------------------------------------------------


@pytest.mark.parametrize("char", list("<>%$&;'\""))
def test_safe_string_refuses_each_forbidden_character(char):
    assert messages_of(fields.safe_string(32), f"abc{char}def") == [INVALID]


@pytest.mark.parametrize("text", ["centos-7", "Ubuntu 18.04 (LTS)", "a/b:c_d.e-f!@#*()", "ěščřž"])
def test_safe_string_accepts_text_without_forbidden_characters(text):
    assert fields.safe_string(32)(text) == text


def test_safe_string_accepts_exactly_the_limit():
    assert fields.safe_string(16)("x" * 16) == "x" * 16


def test_safe_string_too_long_names_limit_and_actual_length():
    assert messages_of(fields.safe_string(16), "x" * 20) == [
        "Ensure this value has at most 16 characters (it has 20)."
    ]


def test_safe_string_reports_length_then_invalid_value_when_both_apply():
    # The original's SafeCharField is a RegexField: the max-length validator runs first.
    assert messages_of(fields.safe_string(4), "<<<<<<") == [
        "Ensure this value has at most 4 characters (it has 6).",
        INVALID,
    ]


@pytest.mark.parametrize("value, expected", [(123, "123"), (1.5, "1.5"), (0, "0")])
def test_safe_string_coerces_numbers_to_text(value, expected):
    assert fields.safe_string(32)(value) == expected


@pytest.mark.parametrize("value", [True, False, ["a"], {"a": 1}])
def test_safe_string_refuses_booleans_lists_and_objects(value):
    assert messages_of(fields.safe_string(32), value) == [NOT_STRING]


def test_safe_string_refuses_empty_when_not_blank():
    assert messages_of(fields.safe_string(32), "") == [REQUIRED]


def test_safe_string_allows_empty_and_null_when_blank():
    check = fields.safe_string(128, blank=True)
    assert check("") == ""
    assert check(None) == ""


def test_safe_string_refuses_null_when_not_blank():
    assert messages_of(fields.safe_string(32), None) == ["This field may not be null."]


def test_desc_validator_allows_128_characters_and_refuses_129():
    desc = fields.VALIDATORS["desc"]
    assert desc("d" * 128) == "d" * 128
    assert messages_of(desc, "d" * 129) == ["Ensure this value has at most 128 characters (it has 129)."]


@pytest.mark.parametrize("name, limit", [("alias", 32), ("version", 16), ("desc", 128)])
def test_safe_string_fields_use_the_documented_limits(name, limit):
    validator = fields.VALIDATORS[name]
    assert validator("v" * limit) == "v" * limit
    assert messages_of(validator, "v" * (limit + 1)) == [
        f"Ensure this value has at most {limit} characters (it has {limit + 1})."
    ]


# --- image name -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "centos-7", "Ubuntu_18.04", "9lives", "a.b-c_d", "x" * 32])
def test_image_name_accepts_names_matching_the_pattern(name):
    assert fields.image_name(name) == name


@pytest.mark.parametrize("name", ["-lead", ".lead", "_lead", "has space", "slash/no", "colon:no", "ěščř", "a\nb", ""])
def test_image_name_refuses_names_outside_the_pattern(name):
    assert messages_of(fields.image_name, name) == [INVALID]


def test_image_name_refuses_more_than_32_characters():
    assert messages_of(fields.image_name, "n" * 33) == ["Ensure this value has at most 32 characters (it has 33)."]


def test_image_name_reports_length_and_pattern_errors_together():
    assert messages_of(fields.image_name, "-" + "n" * 32) == [
        "Ensure this value has at most 32 characters (it has 33).",
        INVALID,
    ]


def test_image_name_refuses_trailing_newline():
    # ``$`` in Python would match before a final newline; the pattern must anchor at the real end.
    assert messages_of(fields.image_name, "centos\n") == [INVALID]


# --- booleans (deviations #1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True), (False, False),
        ("true", True), ("TRUE", True), ("True", True), ("false", False), ("FALSE", False), ("False", False),
        ("1", True), ("0", False), (1, True), (0, False),
    ],
)
def test_boolean_accepts_strict_forms(value, expected):
    assert fields.boolean(value) is expected


@pytest.mark.parametrize("value", ["no", "yes", "on", "off", "t", "f", "", 2, -1, 1.0, None, [], {}])
def test_boolean_refuses_anything_else(value):
    assert messages_of(fields.boolean, value) == [NOT_BOOLEAN]


# --- integers and access --------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(1, 1), ("1", 1), ("3", 3), (" 4 ", 4), ("-2", -2), (0, 0)])
def test_integer_accepts_whole_numbers_and_their_strings(value, expected):
    assert fields.integer(value) == expected


@pytest.mark.parametrize("value", ["1.0", "1e3", "abc", "", True, False, 1.0, 1.5, None, [1], "\u00b2"])
def test_integer_refuses_non_whole_numbers(value):
    assert messages_of(fields.integer, value) == [NOT_INTEGER]


@pytest.mark.parametrize("value", ["9" * 19, "1" * 5000, "-" + "1" * 5000, "0" * 5000 + "1"])
def test_integer_refuses_over_long_number_strings_with_its_message_not_a_crash(value):
    # int() raises ValueError beyond 4300 digits: a consumer would retry that five times.
    assert messages_of(fields.integer, value) == [NOT_INTEGER]
    assert messages_of(fields.access, value) == [NOT_INTEGER]


def test_integer_takes_18_digits():
    assert fields.integer("9" * 18) == 10**18 - 1


@pytest.mark.parametrize("value, expected", [(1, 1), ("1", 1), (3, 3), ("4", 4)])
def test_access_accepts_public_private_and_deleted(value, expected):
    assert fields.access(value) == expected


@pytest.mark.parametrize("value", [2, 9, 0, 5, "2"])
def test_access_refuses_other_integers_with_the_choice_message(value):
    number = int(value)
    assert messages_of(fields.access, value) == [
        f"Select a valid choice. {number} is not one of the available choices."
    ]


@pytest.mark.parametrize("value", ["1.0", True, "public"])
def test_access_refuses_non_integers_with_the_whole_number_message(value):
    assert messages_of(fields.access, value) == [NOT_INTEGER]


# --- tags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (["a", "b-c", "d_e"], ["a", "b-c", "d_e"]),
        (["with space", "x:y", "p/q"], ["with space", "x:y", "p/q"]),
        ("a,b,c", ["a", "b", "c"]),
        ("a b c", ["a", "b", "c"]),
        ("a, b  c", ["a", "b  c"]),  # with a comma, commas separate and spaces stay inside a tag
        ("a a b", ["a", "b"]),
        ("", []),
        ([], []),
    ],
)
def test_tags_accepts_a_list_or_a_comma_or_space_separated_string(value, expected):
    assert fields.tags(value) == expected


@pytest.mark.parametrize("value", [["ok", "no.dot"], "ok,no.dot", "v1.0", ["a<b"], [""], [1], {"a": 1}, 5])
def test_tags_refuses_dots_other_characters_and_non_string_items(value):
    assert messages_of(fields.tags, value) == [INVALID]


# --- URLs -----------------------------------------------------------------------------------------

url1024 = fields.url(1024)


@pytest.mark.parametrize(
    "value",
    [
        "http://ok.test/",
        "https://images.example.com/images/2f0c7c3e-1111-2222-3333-444455556666",
        "http://localhost/",
        "http://localhost:8080/x",
        "http://127.0.0.1/",
        "https://10.1.2.3:8443/images/x",
        "http://[::1]/",
        "http://[2001:db8::1]:8080/x",
        "HTTPS://OK.TEST/upper",
    ],
)
def test_url_accepts_http_and_https_urls_with_a_valid_host(value):
    assert url1024(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "ftp://ok.test/file",
        "file:///etc/passwd",
        "gopher://ok.test/",
        "ok.test/images/x",
        "http://images/",
        "http://2130706433/",
        "http://256.1.1.1/",
        "http://user@127.0.0.1:80@x.test/",
        "http://-bad.test/",
        "http://ok.test:0/",
        "http://sp ace.test/",
        "http://[zz]/",
        "http://",
        "not a url",
    ],
)
def test_url_refuses_other_schemes_and_invalid_hosts(value):
    assert messages_of(url1024, value) == [INVALID_URL]


@pytest.mark.parametrize("value", [None, ""])
def test_url_is_required(value):
    assert messages_of(url1024, value) == [REQUIRED]


def test_url_longer_than_1024_characters_gets_the_length_message():
    value = "http://ok.test/" + "a" * 1010
    assert len(value) == 1025
    assert messages_of(url1024, value) == ["Ensure this value has at most 1024 characters (it has 1025)."]


def test_url_of_exactly_1024_characters_is_accepted():
    value = "http://ok.test/" + "a" * 1009
    assert len(value) == 1024
    assert url1024(value) == value


def test_invalid_url_that_is_also_too_long_gets_both_messages():
    value = "ftp://ok.test/" + "a" * 1020
    assert messages_of(url1024, value) == [
        f"Ensure this value has at most 1024 characters (it has {len(value)}).",
        INVALID_URL,
    ]


@pytest.mark.parametrize("value", [True, 12, ["http://ok.test/"]])
def test_url_refuses_values_that_are_not_urls(value):
    messages = messages_of(url1024, value)
    assert messages and set(messages) <= {INVALID_URL, NOT_STRING}


# --- validate() and order_errors() ----------------------------------------------------------------


def test_validate_skips_absent_keys():
    values, errors = fields.validate({"alias": "centos"}, fields.UPDATE_FIELDS)
    assert values == {"alias": "centos"}
    assert errors == {}


def test_validate_returns_normalised_values():
    values, errors = fields.validate(
        {"access": "1", "resize": "true", "deploy": 0, "tags": "a,b", "version": 7}, fields.UPDATE_FIELDS
    )
    assert errors == {}
    assert values == {"access": 1, "resize": True, "deploy": False, "tags": ["a", "b"], "version": "7"}


def test_validate_ignores_keys_outside_the_requested_fields():
    values, errors = fields.validate({"name": "-bad", "uuid": "x", "alias": "ok"}, fields.UPDATE_FIELDS)
    assert values == {"alias": "ok"}
    assert errors == {}


def test_validate_lists_errors_in_the_original_serializer_field_order():
    payload = {
        "tags": "v1.0",
        "deploy": "maybe",
        "desc": "<b>",
        "access": 2,
        "version": "x" * 17,
        "alias": "a;b",
        "dc_bound": "no",
        "file_url": "ftp://ok.test/",
        "manifest_url": "nope",
    }
    values, errors = fields.validate(payload, fields.IMPORT_FIELDS)
    assert values == {}
    assert list(errors) == [
        "manifest_url", "file_url", "dc_bound", "alias", "version", "access", "desc", "deploy", "tags",
    ]
    assert errors == {
        "manifest_url": [INVALID_URL],
        "file_url": [INVALID_URL],
        "dc_bound": [NOT_BOOLEAN],
        "alias": [INVALID],
        "version": ["Ensure this value has at most 16 characters (it has 17)."],
        "access": ["Select a valid choice. 2 is not one of the available choices."],
        "desc": [INVALID],
        "deploy": [NOT_BOOLEAN],
        "tags": [INVALID],
    }


def test_validate_keeps_valid_values_next_to_errors():
    values, errors = fields.validate({"alias": "ok", "access": "x"}, fields.UPDATE_FIELDS)
    assert values == {"alias": "ok"}
    assert errors == {"access": [NOT_INTEGER]}


def test_order_errors_follows_field_order_and_puts_unknown_keys_last_alphabetically():
    errors = {
        "non_field_errors": ["n"],
        "tags": ["t"],
        "zeta": ["z"],
        "name": ["x"],
        "manifest_url": ["m"],
        "dc": ["d"],
        "dc_bound": ["b"],
    }
    ordered = fields.order_errors(errors)
    assert list(ordered) == ["manifest_url", "dc_bound", "dc", "name", "tags", "non_field_errors", "zeta"]
    assert ordered == errors


def test_order_errors_copies_message_lists():
    errors = {"alias": ["a"]}
    ordered = fields.order_errors(errors)
    ordered["alias"].append("b")
    assert errors == {"alias": ["a"]}


def test_tags_are_at_most_64_of_at_most_64_characters():
    """The original has no limit; an image's row, its events and every list answer carry all its tags."""
    assert fields.tags(["t"] * 64) == ["t"] * 64
    assert messages_of(fields.tags, ["t"] * 65) == ["Ensure this field has no more than 64 elements."]
    assert messages_of(fields.tags, ",".join(f"t{i}" for i in range(100_000))) == [
        "Ensure this field has no more than 64 elements."]
    assert fields.tags(["x" * 64]) == ["x" * 64]
    assert messages_of(fields.tags, ["x" * 65]) == ["Ensure this value has at most 64 characters (it has 65)."]
