"""Detect and redact personal data (PII) in LLM requests before they leave for a cloud API; count PII in answers.

Kinds: ``email``, ``phone``, ``card`` and ``national_id``. Regexes only propose candidates; maintained libraries
decide:

* phone: ``phonenumbers.PhoneNumberMatcher`` (Google libphonenumber), leniency VALID, with a configurable default
  region for numbers written without ``+country``;
* card: 13-19 digits (optionally grouped by spaces or dashes), a plausible issuer prefix and length, ``stdnum.luhn``;
* national_id: the ``python-stdnum`` validator of each scheme: US SSN, ES DNI/NIE, FR NIR, IT codice fiscale,
  IN Aadhaar (Verhoeff), DE Steuer-IdNr. stdnum has no UK NINO module, so the HMRC prefix rules are checked here.
  Numbers with no check digit and no distinctive shape (a bare 9-digit SSN, a bare 12-digit Aadhaar, the 11-digit
  Steuer-IdNr) are only taken right after a label ("SSN:", "Aadhaar", "Steuer-ID"), to leave ordinary numbers alone.

Cost: text with no ASCII digit and no ``@`` returns after a few ``in`` tests. Otherwise one regex pass finds digit
clusters worth a look (dates, IP addresses and short numbers are dropped), and the id regexes, the card check and the
phone matcher only run in small windows around those clusters. PhoneNumberMatcher is by far the most expensive step
(30-150 us a call), so a metadata check first rules out stretches that cannot hold a valid number.

Findings carry a kind and offsets, never the matched text; nothing here logs, and no exception message holds text.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import phonenumbers
from stdnum import luhn
from stdnum.de import idnr as de_idnr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fr import nir as fr_nir
from stdnum.in_ import aadhaar as in_aadhaar
from stdnum.it import codicefiscale as it_codicefiscale
from stdnum.us import ssn as us_ssn

__all__ = ["PII_KINDS", "Finding", "PIIScanner"]

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "national_id")

# When findings overlap, the kind earlier here wins (a phone number inside an e-mail address, a card read as a phone).
_PRIORITY: dict[str, int] = {"email": 0, "card": 1, "national_id": 2, "phone": 3}
_DIGIT_KINDS = frozenset({"phone", "card", "national_id"})

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

_EMAIL = re.compile(r"(?<![\w.%+-])[\w%+-][\w.%+-]{0,63}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")

# Characters that glue a number to a neighbouring word into one identifier: ORD-2024-000123, a4567, v1.2, x_123.
_IDENT_JOINERS = "-_/#."

# --- cards -----------------------------------------------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")  # digits joined by single spaces or dashes
_DIGIT_GROUP = re.compile(r"\d+")
_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19

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
_NATIONAL_IDS: tuple[_IdPattern, ...] = (
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
_PHONE_HINT = re.compile(r"\d(?:[ \t().\-/]{0,3}\d){5,}")
_PHONE_MIN_DIGITS = 7  # 6 with a leading '+': "+98 9601" is the shortest valid international number
_PHONE_MAX_DIGITS = 20  # 15 (E.164) plus an international or national prefix
_WHITESPACE = re.compile(r"\s+")


class _PhonePrefilter:
    """A cheap necessary condition for PhoneNumberMatcher (leniency VALID) to find a number in a digit stretch.

    A number the matcher accepts passes ``is_valid_number``, so its national significant number matches the general
    pattern of a region with its country code. Unless a ``+`` or an international prefix is written, that is the
    default region's country code, and the digits appear as they are, after the national prefix, or after the
    country code. Those three readings are checked against the metadata for every run of whole digit groups; what
    cannot be ruled out goes to the matcher (tests/unit/test_pii.py compares both on every region's example numbers).
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
        groups = _DIGIT_GROUP.findall(text, start, end)
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


def _has_digit(text: str) -> bool:
    # str.__contains__ is memchr-fast; a regex search steps through the text one character at a time.
    return any(d in text for d in "0123456789")


def _date_or_ip(stretch: str) -> bool:
    if _DATE.fullmatch(stretch):
        return True
    ip = _IPV4.fullmatch(stretch)
    # Octets have no leading zero: "021.234.56.78" is a Swiss phone number, not an address.
    return ip is not None and all(o == "0" or (o[0] != "0" and int(o) <= 255) for o in ip.groups())


def _glued_before(text: str, start: int) -> bool:
    """True when text[start] continues a token: a letter or digit before it, or one behind a joiner (ORD-2024)."""
    if start == 0:
        return False
    before = text[start - 1]
    if before.isalnum() or before == "_":
        return True
    return start > 1 and before in _IDENT_JOINERS and text[start - 2].isalnum()


def _glued_after(text: str, end: int) -> bool:
    """True when the token goes on after text[end - 1]: a letter or digit, or a joiner and one (``-beta``, ``.5``)."""
    if end >= len(text):
        return False
    after = text[end]
    if after.isalnum() or after == "_":
        return True
    return end + 1 < len(text) and after in _IDENT_JOINERS and text[end + 1].isalnum()


def _trim_glued(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop the first/last whitespace-separated token of [start, end) when it belongs to an identifier
    (``ORD-2024-000123``, the tail of a UUID); an empty span when nothing is left."""
    if _glued_before(text, start):
        cut = _WHITESPACE.search(text, start, end)
        if cut is None:
            return start, start
        start = cut.end()
    if start < end and _glued_after(text, end):
        while end > start and not text[end - 1].isspace():
            end -= 1
    while end > start and not text[end - 1].isdigit():
        end -= 1
    return start, end


def _merge(spans: list[list[int]], start: int, end: int, *extra: int) -> None:
    """Append [start, end, *extra] to ``spans`` (built left to right), merging it into the last span on overlap."""
    if spans and start <= spans[-1][1]:
        last = spans[-1]
        last[1] = max(last[1], end)
        for k, value in enumerate(extra, 2):
            last[k] = max(last[k], value)
    else:
        spans.append([start, end, *extra])


def _email_windows(text: str) -> list[list[int]]:
    """Stretches around each ``@``, wide enough for a 64-character local part and a long domain."""
    spans: list[list[int]] = []
    at = text.find("@")
    while at >= 0:
        _merge(spans, max(0, at - 65), min(len(text), at + 256))
        at = text.find("@", at + 1)
    return spans


def _digit_windows(text: str) -> list[list[int]]:
    """[start, end, most digits in one cluster] around each place where a phone, card or national id could be."""
    spans: list[list[int]] = []
    n = len(text)
    for m in _CANDIDATE.finditer(text):
        cluster, start = m.group(), m.start()
        if cluster[-1].isalpha():
            digits = 0  # codice fiscale core
        else:
            digits = sum(map(str.isdigit, cluster))
            if digits < _ID_MIN_DIGITS or (_date_or_ip(cluster) and text[start - 1 : start] != "+"):
                continue
        _merge(spans, max(0, start - _LABEL_REACH), min(n, m.end() + _RIGHT_REACH), digits)
    return spans


def _plausible_card(digits: str) -> bool:
    n = len(digits)
    for low, high, lengths in _IIN_RULES:
        if n in lengths and low <= digits[: len(low)] <= high:
            return luhn.is_valid(digits)
    return False


def _card_end(text: str, groups: list[tuple[int, int]], i: int, run_start: int, run_end: int) -> int:
    """Index of the last digit group of the longest card number that starts at group ``i``, or -1."""
    candidates: list[int] = []
    total = 0
    for j in range(i, len(groups)):
        total += groups[j][1] - groups[j][0]
        if total > _CARD_MAX_DIGITS:
            break
        if total >= _CARD_MIN_DIGITS:
            candidates.append(j)
    for j in reversed(candidates):
        start, end = groups[i][0], groups[j][1]
        if j > i:
            # Written cards use one separator and groups of 3-6 digits (4-4-4-4, 4-6-5); the last may be shorter.
            if len({text[groups[k][1]] for k in range(i, j)}) != 1:
                continue
            if not all(3 <= e - s <= 6 for s, e in groups[i:j]) or groups[j][1] - groups[j][0] > 6:
                continue
        if (start == run_start and _glued_before(text, start)) or (end == run_end and _glued_after(text, end)):
            continue
        if _plausible_card("".join(text[s:e] for s, e in groups[i : j + 1])):
            return j
    return -1


# --- public API ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and its [start, end) offsets in the scanned text (never the value)."""

    kind: str
    start: int
    end: int


def _resolve(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping findings sorted by start, preferring kinds by _PRIORITY, then earlier and longer ones."""
    starts: list[int] = []  # kept findings, sorted by start (they never overlap, so also by end)
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (_PRIORITY[f.kind], f.start, f.start - f.end)):
        i = bisect.bisect_right(starts, f.start)
        if (i > 0 and kept[i - 1].end > f.start) or (i < len(kept) and kept[i].start < f.end):
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept


class PIIScanner:
    """Finds, redacts and counts PII of the chosen kinds. Keeps no per-call state: one instance serves all threads."""

    def __init__(self, kinds: Iterable[str] = PII_KINDS, phone_region: str = "US") -> None:
        """``phone_region``: the ISO 3166 region assumed for phone numbers written without ``+country``."""
        chosen = frozenset(kinds)
        unknown = chosen.difference(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; expected a subset of {PII_KINDS}")
        region = phone_region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unsupported phone region {phone_region!r}")
        self.kinds: frozenset[str] = chosen
        self.phone_region: str = region
        self._phone_prefilter = _PhonePrefilter(region)

    # --- detection ---

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, sorted by start offset."""
        if not text:
            return []
        has_at = "@" in text
        has_digit = _has_digit(text)
        if not (has_at or has_digit):
            return []
        found: list[Finding] = []
        if has_at and "email" in self.kinds:
            for w_start, w_end in _email_windows(text):
                found.extend(Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(text, w_start, w_end))
        if has_digit and not self.kinds.isdisjoint(_DIGIT_KINDS):
            for w_start, w_end, digits in _digit_windows(text):
                if digits >= _CARD_MIN_DIGITS and "card" in self.kinds:
                    self._find_cards(text, w_start, w_end, found)
                if "national_id" in self.kinds:
                    self._find_national_ids(text, w_start, w_end, found)
                if digits >= _PHONE_MIN_DIGITS - 1 and "phone" in self.kinds:
                    self._find_phones(text, w_start, w_end, found)
        return _resolve(found) if len(found) > 1 else found

    @staticmethod
    def _find_cards(text: str, w_start: int, w_end: int, out: list[Finding]) -> None:
        for run in _DIGIT_RUN.finditer(text, w_start, w_end):
            run_start, run_end = run.span()
            if run_end - run_start < _CARD_MIN_DIGITS:
                continue
            groups = [g.span() for g in _DIGIT_GROUP.finditer(text, run_start, run_end)]
            i = 0
            while i < len(groups):
                last = _card_end(text, groups, i, run_start, run_end)
                if last < 0:
                    i += 1
                else:
                    out.append(Finding("card", groups[i][0], groups[last][1]))
                    i = last + 1

    @staticmethod
    def _find_national_ids(text: str, w_start: int, w_end: int, out: list[Finding]) -> None:
        lowered = ""
        for id_pattern in _NATIONAL_IDS:
            if id_pattern.keywords:
                lowered = lowered or text[w_start:w_end].lower()
                if not any(k in lowered for k in id_pattern.keywords):
                    continue
            group = id_pattern.group
            for m in id_pattern.pattern.finditer(text, w_start, w_end):
                if id_pattern.validate(m.group(group)):
                    out.append(Finding("national_id", m.start(group), m.end(group)))

    def _find_phones(self, text: str, w_start: int, w_end: int, out: list[Finding]) -> None:
        taken = [(f.start, f.end) for f in out]
        chunks: list[list[int]] = []
        for hint in _PHONE_HINT.finditer(text, w_start, w_end):
            h_start, h_end = _trim_glued(text, *hint.span())
            if h_end - h_start < _PHONE_MIN_DIGITS - 1 or any(s <= h_start and h_end <= e for s, e in taken):
                continue  # an identifier's tail, or inside an e-mail, card or id (which win over a phone)
            international = "+" in text[max(0, h_start - 3) : h_start]
            stretch = text[h_start:h_end]
            if sum(map(str.isdigit, stretch)) < _PHONE_MIN_DIGITS - international:
                continue
            if not international and _date_or_ip(stretch):
                continue
            if not self._phone_prefilter.worth_matching(text, h_start, h_end, international):
                continue
            # The matcher needs the stretch, a leading '+' or '(', and a few characters of right context.
            start = h_start
            while start > max(w_start, h_start - 2) and text[start - 1] in "+( ":
                start -= 1
            _merge(chunks, start, min(w_end, h_end + 3))
        for c_start, c_end in chunks:
            matcher = phonenumbers.PhoneNumberMatcher(
                text[c_start:c_end], self.phone_region, leniency=phonenumbers.Leniency.VALID
            )
            for match in matcher:
                start, end = c_start + match.start, c_start + match.end
                if not (_glued_before(text, start) or _glued_after(text, end)):
                    out.append(Finding("phone", start, end))

    # --- redaction and counting ---

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Replace every finding by ``[EMAIL]``, ``[PHONE]``, ``[CARD]`` or ``[NATIONAL_ID]``; counts per kind."""
        counts: Counter[str] = Counter()
        findings = self.find(text)
        if not findings:
            return text, counts
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(f"[{f.kind.upper()}]")
            counts[f.kind] += 1
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts), counts

    def _redact_into(self, text: str, counts: Counter[str]) -> str:
        redacted, found = self.redact(text)
        counts.update(found)
        return redacted

    def _redact_content(self, content: Any, counts: Counter[str]) -> Any:
        if isinstance(content, str):
            return self._redact_into(content, counts)
        if isinstance(content, list):
            return [
                {**part, "text": self._redact_into(part["text"], counts)}
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        return content

    def redact_request(self, endpoint: str, body: dict) -> tuple[dict, Counter[str]]:
        """Redact the prompt text of an OpenAI-style request body; returns a new body and the counts per kind.

        ``endpoint`` ``"chat"``: each message's ``content`` (a string, or a list of parts whose ``{"type": "text"}``
        entries are redacted); other message fields (``name``, ``tool_calls``, ...) are left as they are.
        ``"completions"``: ``prompt``, a string or a list of strings (token-id prompts are left as they are).
        The input is not mutated; the new body shares the untouched values (tools, images, ...) with it.
        """
        counts: Counter[str] = Counter()
        out = dict(body)
        if endpoint == "chat":
            messages = body.get("messages")
            if isinstance(messages, list):
                out["messages"] = [
                    {**m, "content": self._redact_content(m["content"], counts)}
                    if isinstance(m, dict) and "content" in m
                    else m
                    for m in messages
                ]
        elif endpoint == "completions":
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                out["prompt"] = self._redact_into(prompt, counts)
            elif isinstance(prompt, list):
                out["prompt"] = [self._redact_into(p, counts) if isinstance(p, str) else p for p in prompt]
        else:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected 'chat' or 'completions'")
        return out, counts

    def count_answer(self, endpoint: str, body: dict) -> Counter[str]:
        """Count PII kinds in an OpenAI-style response body: chat ``choices[].message.content`` (or a stream
        chunk's ``choices[].delta.content``), completions ``choices[].text``."""
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"unknown endpoint {endpoint!r}; expected 'chat' or 'completions'")
        counts: Counter[str] = Counter()
        choices = body.get("choices")
        if not isinstance(choices, list):
            return counts
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            texts: list[Any] = []
            if endpoint == "completions":
                texts.append(choice.get("text"))
            else:
                for key in ("message", "delta"):
                    message = choice.get(key)
                    if isinstance(message, dict):
                        content = message.get("content")
                        if isinstance(content, list):
                            texts.extend(p.get("text") for p in content if isinstance(p, dict))
                        else:
                            texts.append(content)
            for text in texts:
                if isinstance(text, str):
                    counts.update(f.kind for f in self.find(text))
        return counts
