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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from serving.policy.pii_match import (
    CARD_MIN_DIGITS,
    DIGIT_GROUP,
    DIGIT_KINDS,
    DIGIT_RUN,
    EMAIL,
    NATIONAL_IDS,
    PHONE_HINT,
    PHONE_MIN_DIGITS,
    PhonePrefilter,
    card_end,
    contains_digit,
    date_or_ip,
    digit_windows,
    email_windows,
    glued_after,
    glued_before,
    merge,
    trim_glued,
)

__all__ = ["PII_KINDS", "Finding", "PIIScanner"]

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "national_id")

# When findings overlap, the kind earlier here wins (a phone number inside an e-mail address, a card read as a phone).
_PRIORITY: dict[str, int] = {"email": 0, "card": 1, "national_id": 2, "phone": 3}
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
        self._phone_prefilter = PhonePrefilter(region)

    # --- detection ---

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, sorted by start offset."""
        if not text:
            return []
        has_at = "@" in text
        has_digit = contains_digit(text)
        if not (has_at or has_digit):
            return []
        found: list[Finding] = []
        if has_at and "email" in self.kinds:
            for w_start, w_end in email_windows(text):
                found.extend(Finding("email", m.start(), m.end()) for m in EMAIL.finditer(text, w_start, w_end))
        if has_digit and not self.kinds.isdisjoint(DIGIT_KINDS):
            for w_start, w_end, digits in digit_windows(text):
                if digits >= CARD_MIN_DIGITS and "card" in self.kinds:
                    self._find_cards(text, w_start, w_end, found)
                if "national_id" in self.kinds:
                    self._find_national_ids(text, w_start, w_end, found)
                if digits >= PHONE_MIN_DIGITS - 1 and "phone" in self.kinds:
                    self._find_phones(text, w_start, w_end, found)
        return _resolve(found) if len(found) > 1 else found

    @staticmethod
    def _find_cards(text: str, w_start: int, w_end: int, out: list[Finding]) -> None:
        for run in DIGIT_RUN.finditer(text, w_start, w_end):
            run_start, run_end = run.span()
            if run_end - run_start < CARD_MIN_DIGITS:
                continue
            groups = [g.span() for g in DIGIT_GROUP.finditer(text, run_start, run_end)]
            i = 0
            while i < len(groups):
                last = card_end(text, groups, i, run_start, run_end)
                if last < 0:
                    i += 1
                else:
                    out.append(Finding("card", groups[i][0], groups[last][1]))
                    i = last + 1

    @staticmethod
    def _find_national_ids(text: str, w_start: int, w_end: int, out: list[Finding]) -> None:
        lowered = ""
        for id_pattern in NATIONAL_IDS:
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
        for hint in PHONE_HINT.finditer(text, w_start, w_end):
            h_start, h_end = trim_glued(text, *hint.span())
            if h_end - h_start < PHONE_MIN_DIGITS - 1 or any(s <= h_start and h_end <= e for s, e in taken):
                continue  # an identifier's tail, or inside an e-mail, card or id (which win over a phone)
            international = "+" in text[max(0, h_start - 3) : h_start]
            stretch = text[h_start:h_end]
            if sum(map(str.isdigit, stretch)) < PHONE_MIN_DIGITS - international:
                continue
            if not international and date_or_ip(stretch):
                continue
            if not self._phone_prefilter.worth_matching(text, h_start, h_end, international):
                continue
            # The matcher needs the stretch, a leading '+' or '(', and a few characters of right context.
            start = h_start
            while start > max(w_start, h_start - 2) and text[start - 1] in "+( ":
                start -= 1
            merge(chunks, start, min(w_end, h_end + 3))
        for c_start, c_end in chunks:
            matcher = phonenumbers.PhoneNumberMatcher(
                text[c_start:c_end], self.phone_region, leniency=phonenumbers.Leniency.VALID
            )
            for match in matcher:
                start, end = c_start + match.start, c_start + match.end
                if not (glued_before(text, start) or glued_after(text, end)):
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
