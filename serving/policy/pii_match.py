"""Where PII could be in a text: the candidate regexes, the national-id schemes and their validators, the phone
prefilter and the card checks. `serving.policy.pii.PIIScanner` runs them; nothing here keeps or logs text."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import phonenumbers
from stdnum import luhn
from stdnum.de import idnr as de_idnr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fr import nir as fr_nir
from stdnum.in_ import aadhaar as in_aadhaar
from stdnum.it import codicefiscale as it_codicefiscale
from stdnum.us import ssn as us_ssn

DIGIT_KINDS = frozenset({"phone", "card", "national_id"})

# --- candidate scanning ----------------------------------------------------------------------------------------------

# One pass over the text finds where a phone, card or id could be: two digits, then digits and separators, ending in a
# digit, 6+ characters in all; or the "83S18" year-month-day core of a codice fiscale. Plain character classes keep
# the scan at a few ns per character (nested repeats cost ~3x more).
_CANDIDATE = re.compile(r"[0-9][0-9](?:[0-9 \t().\-/]{3,}[0-9]|[ABCDEHLMPRST][0-9LMNP-V]{2}[A-Z])")
_ID_MIN_DIGITS = 6  # a NINO, the shortest id, has 6 digits
_LABEL_REACH = 48  # window reach left of a cluster: room for "social security number is"
_RIGHT_REACH = 16  # and right of it: id suffix letters, the phone matcher's context

_DATE = re.compile(r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?:[ T]\d{1,2})?")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")

EMAIL = re.compile(r"(?<![\w.%+-])[\w%+-][\w.%+-]{0,63}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")

# Characters that glue a number to a neighbouring word into one identifier: ORD-2024-000123, a4567, v1.2, x_123.
_IDENT_JOINERS = "-_/#."

# --- cards -----------------------------------------------------------------------------------------------------------

DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")  # digits joined by single spaces or dashes
DIGIT_GROUP = re.compile(r"\d+")
CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19

# Issuer ranges: (lowest prefix, highest prefix, allowed lengths); prefixes of one length compare as strings.
_LONG = (16, 17, 18, 19)
_IIN_RULES: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard 2-series
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),
    ("300", "305", (14, *_LONG)),  # Diners Club
    ("36", "36", (14, *_LONG)),
    ("38", "39", _LONG),
    ("6011", "6011", _LONG),  # Discover
    ("644", "649", _LONG),
    ("65", "65", _LONG),
    ("3528", "3589", _LONG),  # JCB
    ("62", "62", _LONG),  # UnionPay
    ("2200", "2204", _LONG),  # Mir
    ("60", "60", _LONG),  # RuPay
    ("50", "50", (13, 14, 15, *_LONG)),  # Maestro
    ("56", "58", (13, 14, 15, *_LONG)),
    ("63", "63", (13, 14, 15, *_LONG)),
    ("67", "67", (13, 14, 15, *_LONG)),
)

# --- national ids ----------------------------------------------------------------------------------------------------

_NINO_UNALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _valid_nino(candidate: str) -> bool:
    """UK National Insurance number; the regex already enforces the letter rules, this the unallocated prefixes."""
    return candidate[:2] not in _NINO_UNALLOCATED


def _valid_grouped_aadhaar(candidate: str) -> bool:
    """Aadhaar written 1234 5678 9012, but not three years in a row ("2023 2024 2025" passes Verhoeff 1 in 10)."""
    if all(1900 <= int(candidate[k : k + 4]) <= 2099 for k in (0, 5, 10)):
        return False
    return in_aadhaar.is_valid(candidate)


class _IdPattern(NamedTuple):
    pattern: re.Pattern[str]
    validate: Callable[[str], bool]
    group: int = 0  # the group holding the number (label patterns match the label too)
    keywords: tuple[str, ...] = ()  # one of these (lower case) must be in the window before the regex runs


# Boundary lookbehinds sit after the first character so that the regex engine can skip ahead to that character.
# Grouped numbers must stand alone, not sit inside a longer list of numbers ("100 200 300 400").
NATIONAL_IDS: tuple[_IdPattern, ...] = (
    # US SSN written 123-45-6789 or 123 45 6789, or 9 bare digits right after a label.
    _IdPattern(re.compile(r"\d(?<![\w.-]\d)(?<!\d[ -]\d)\d{2}([- ])\d{2}\1\d{4}(?![\w-]|[. ]\d)"), us_ssn.is_valid),
    _IdPattern(
        re.compile(r"(?i:\b(?:ssn|social\s+security\s+(?:number|no\.?|#))\s*(?:is\s+|[:#=]\s*)?)(\d{9})\b"),
        us_ssn.is_valid,
        1,
        ("ssn", "social"),
    ),
    # UK NINO AB 12 34 56 C: no D, F, I, Q, U, V in the prefix, no O second, suffix A-D.
    _IdPattern(
        re.compile(
            r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-Z])[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
        ),
        _valid_nino,
    ),
    # ES DNI 12345678Z and NIE X1234567L.
    _IdPattern(re.compile(r"\d(?<![\w-]\d)\d{7}-?[A-Z](?!\w)"), es_dni.is_valid),
    _IdPattern(re.compile(r"[XYZ](?<![\w-][XYZ])-?\d{7}-?[A-Z](?!\w)"), es_nie.is_valid),
    # FR NIR (numero de securite sociale): 15 characters, spaced or not, mod-97 key.
    _IdPattern(
        re.compile(r"[12](?<![\w.-][12]) ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\w)"), fr_nir.is_valid
    ),
    # IT codice fiscale: 16 characters, omocodia letters allowed in the digit positions.
    _IdPattern(
        re.compile(
            r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]{5}[0-9LMNP-V]{2}[ABCDEHLMPRST][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}[A-Z]"
            r"(?![A-Za-z0-9])"
        ),
        it_codicefiscale.is_valid,
    ),
    # IN Aadhaar: grouped 1234 5678 9012, or 12 bare digits right after a label.
    _IdPattern(
        re.compile(r"[2-9](?<![\w.-][2-9])(?<!\d[ -][2-9])\d{3}([ -])\d{4}\1\d{4}(?![\w-]|[. ]\d)"),
        _valid_grouped_aadhaar,
    ),
    _IdPattern(
        re.compile(r"(?i:\baadhaa?r\b(?:\s+(?:no\.?|number|#))?\s*[:#=]?\s*)([2-9]\d{11})\b"),
        in_aadhaar.is_valid,
        1,
        ("aadhaar", "aadhar"),
    ),
    # DE steuerliche Identifikationsnummer, only right after a label.
    _IdPattern(
        re.compile(
            r"(?i:\b(?:steuer-?id(?:entifikationsnummer)?|identifikationsnummer|idnr|tax\s+id(?:entification)?"
            r"(?:\s+(?:number|no\.?))?)\b[^\d\n]{0,20}?)([1-9]\d \d{3} \d{3} \d{3}|[1-9]\d{10})\b"
        ),
        de_idnr.is_valid,
        1,
        ("steuer", "identifikation", "idnr", "tax"),
    ),
)

# --- phones ----------------------------------------------------------------------------------------------------------

# 6+ digits joined by short separators; only these stretches (plus a leading '+' or '(') reach the matcher.
PHONE_HINT = re.compile(r"\d(?:[ \t().\-/]{0,3}\d){5,}")
PHONE_MIN_DIGITS = 7  # 6 with a leading '+': "+98 9601" is the shortest valid international number
_PHONE_MAX_DIGITS = 20  # 15 (E.164) plus an international or national prefix
_WHITESPACE = re.compile(r"\s+")


class PhonePrefilter:
    """A cheap necessary condition for PhoneNumberMatcher (leniency VALID) to find a number in a digit stretch.

    A number the matcher accepts passes ``is_valid_number``, so its national significant number matches the general
    pattern of a region with its country code. Unless a ``+`` or an international prefix is written, that is the
    default region's country code, and the digits appear as they are, after the national prefix, or after the
    country code. Those three readings are checked against the metadata for every run of whole digit groups; what
    cannot be ruled out goes to the matcher (tests/unit/policy/test_pii.py compares both on every region's example
    numbers).
    """

    def __init__(self, region: str) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        # Regions whose national prefix parsing rewrites the digits (AR, BR, JP, ...) always go to the matcher.
        self.always = metadata is None or bool(metadata.national_prefix_transform_rule)
        if metadata is None or self.always:
            return
        patterns = []
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(metadata.country_code or 0, (region,))
        for other in regions:
            other_metadata = phonenumbers.PhoneMetadata.metadata_for_region(other)
            desc = other_metadata.general_desc if other_metadata is not None else None
            if desc is not None and desc.national_number_pattern:
                patterns.append(f"(?:{desc.national_number_pattern})")
        self.national_number = re.compile("|".join(patterns) or "(?!)")
        self.national_prefix = re.compile(metadata.national_prefix_for_parsing or "(?!)")
        self.international_prefix = re.compile(metadata.international_prefix or "(?!)")
        self.country_code = str(metadata.country_code)

    def _could_be_valid(self, digits: str) -> bool:
        if self.international_prefix.match(digits) or self.national_number.fullmatch(digits):
            return True
        prefix = self.national_prefix.match(digits)
        if prefix and self.national_number.fullmatch(digits, prefix.end()):
            return True
        return digits.startswith(self.country_code) and bool(
            self.national_number.fullmatch(digits, len(self.country_code))
        )

    def worth_matching(self, text: str, start: int, end: int, international: bool) -> bool:
        """False only when no run of whole digit groups in text[start:end] can be a valid phone number."""
        if self.always or international:
            return True
        groups = DIGIT_GROUP.findall(text, start, end)
        for i in range(len(groups)):
            digits = ""
            for group in groups[i:]:
                digits += group
                if len(digits) > _PHONE_MAX_DIGITS:
                    break
                if self._could_be_valid(digits):
                    return True
        return False


# --- helpers ---------------------------------------------------------------------------------------------------------


def contains_digit(text: str) -> bool:
    # str.__contains__ is memchr-fast; a regex search steps through the text one character at a time.
    return any(d in text for d in "0123456789")


def date_or_ip(stretch: str) -> bool:
    if _DATE.fullmatch(stretch):
        return True
    ip = _IPV4.fullmatch(stretch)
    # Octets have no leading zero: "021.234.56.78" is a Swiss phone number, not an address.
    return ip is not None and all(o == "0" or (o[0] != "0" and int(o) <= 255) for o in ip.groups())


def glued_before(text: str, start: int) -> bool:
    """True when text[start] continues a token: a letter or digit before it, or one behind a joiner (ORD-2024)."""
    if start == 0:
        return False
    before = text[start - 1]
    if before.isalnum() or before == "_":
        return True
    return start > 1 and before in _IDENT_JOINERS and text[start - 2].isalnum()


def glued_after(text: str, end: int) -> bool:
    """True when the token goes on after text[end - 1]: a letter or digit, or a joiner and one (``-beta``, ``.5``)."""
    if end >= len(text):
        return False
    after = text[end]
    if after.isalnum() or after == "_":
        return True
    return end + 1 < len(text) and after in _IDENT_JOINERS and text[end + 1].isalnum()


def trim_glued(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop the first/last whitespace-separated token of [start, end) when it belongs to an identifier
    (``ORD-2024-000123``, the tail of a UUID); an empty span when nothing is left."""
    if glued_before(text, start):
        cut = _WHITESPACE.search(text, start, end)
        if cut is None:
            return start, start
        start = cut.end()
    if start < end and glued_after(text, end):
        while end > start and not text[end - 1].isspace():
            end -= 1
    while end > start and not text[end - 1].isdigit():
        end -= 1
    return start, end


def merge(spans: list[list[int]], start: int, end: int, *extra: int) -> None:
    """Append [start, end, *extra] to ``spans`` (built left to right), merging it into the last span on overlap."""
    if spans and start <= spans[-1][1]:
        last = spans[-1]
        last[1] = max(last[1], end)
        for k, value in enumerate(extra, 2):
            last[k] = max(last[k], value)
    else:
        spans.append([start, end, *extra])


def email_windows(text: str) -> list[list[int]]:
    """Stretches around each ``@``, wide enough for a 64-character local part and a long domain."""
    spans: list[list[int]] = []
    at = text.find("@")
    while at >= 0:
        merge(spans, max(0, at - 65), min(len(text), at + 256))
        at = text.find("@", at + 1)
    return spans


def digit_windows(text: str) -> list[list[int]]:
    """[start, end, most digits in one cluster] around each place where a phone, card or national id could be."""
    spans: list[list[int]] = []
    n = len(text)
    for m in _CANDIDATE.finditer(text):
        cluster, start = m.group(), m.start()
        if cluster[-1].isalpha():
            digits = 0  # codice fiscale core
        else:
            digits = sum(map(str.isdigit, cluster))
            if digits < _ID_MIN_DIGITS or (date_or_ip(cluster) and text[start - 1 : start] != "+"):
                continue
        merge(spans, max(0, start - _LABEL_REACH), min(n, m.end() + _RIGHT_REACH), digits)
    return spans


def _plausible_card(digits: str) -> bool:
    n = len(digits)
    for low, high, lengths in _IIN_RULES:
        if n in lengths and low <= digits[: len(low)] <= high:
            return luhn.is_valid(digits)
    return False


def card_end(text: str, groups: list[tuple[int, int]], i: int, run_start: int, run_end: int) -> int:
    """Index of the last digit group of the longest card number that starts at group ``i``, or -1."""
    candidates: list[int] = []
    total = 0
    for j in range(i, len(groups)):
        total += groups[j][1] - groups[j][0]
        if total > _CARD_MAX_DIGITS:
            break
        if total >= CARD_MIN_DIGITS:
            candidates.append(j)
    for j in reversed(candidates):
        start, end = groups[i][0], groups[j][1]
        if j > i:
            # Written cards use one separator and groups of 3-6 digits (4-4-4-4, 4-6-5); the last may be shorter.
            if len({text[groups[k][1]] for k in range(i, j)}) != 1:
                continue
            if not all(3 <= e - s <= 6 for s, e in groups[i:j]) or groups[j][1] - groups[j][0] > 6:
                continue
        if (start == run_start and glued_before(text, start)) or (end == run_end and glued_after(text, end)):
            continue
        if _plausible_card("".join(text[s:e] for s, e in groups[i : j + 1])):
            return j
    return -1


