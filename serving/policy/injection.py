"""Prompt-injection HEURISTICS for the user-supplied text of a request.

These are cheap pattern checks for well-known injection phrasings, meant to flag, count and log requests (by signal
name, never by text), not a guarantee: a determined attacker rewords, misspells, translates or encodes the attack
and gets past them, and an honest prompt that quotes an attack (a security write-up, a question about jailbreaks)
sets them off. Treat a signal as a hint for monitoring or for a stricter policy, not as proof.

Signals (``INJECTION_SIGNALS``):

* ``ignore_instructions``: "ignore/disregard/forget/override all previous|prior|above|system instructions",
  "ignore everything above and ...", "forget everything you were told".
* ``prompt_extraction``: "reveal/print/repeat/show your system prompt", "... your hidden instructions",
  "repeat the words above", "what are your instructions".
* ``jailbreak_persona``: role-play jailbreak markers: "you are now DAN", "Do Anything Now", "ChatGPT with Developer
  Mode", "Developer Mode output", "act as an unfiltered/uncensored AI", "you have no restrictions".
* ``fake_delimiters``: chat-template or role markers inside user content: ``<|im_start|>system``, ``<|eot_id|>``,
  ``[INST]``, ``<<SYS>>``, ``</s><s>``, "### System:", a line "System: you are/must ...".
* ``encoded_payload``: a long base64-looking blob together with an instruction to decode it and follow/execute it.

Only user-supplied text is looked at: chat messages with role ``user``, ``tool`` or ``function`` (string content or
``{"type": "text"}`` parts), or the completions ``prompt``. Zero-width characters are removed and non-ASCII text is
NFKC-normalised first (full-width letters, ligatures). Each signal has a keyword gate checked with ``in`` on the
lower-cased text, so its regex only runs when the keyword occurs; all regexes are compiled once.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["INJECTION_SIGNALS", "injection_signals"]

INJECTION_SIGNALS: tuple[str, ...] = (
    "ignore_instructions",
    "prompt_extraction",
    "jailbreak_persona",
    "fake_delimiters",
    "encoded_payload",
)

_USER_ROLES = frozenset({"user", "tool", "function"})
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"))

# Words between the verb and the noun of "ignore all previous instructions". At least one must be a _POINTER (a
# plain "ignore the rules" or "ignore the typo in my previous message" is no injection).
_POINTER = (
    r"all|any|every|your|previous|prior|above|earlier|preceding|foregoing|initial|original|existing|system|"
    r"developer|safety|old|given|other"
)
_FILLER = rf"(?:the|my|these|those|this|that|of|its|their|our|{_POINTER})"
_RULES = (
    r"instructions?|rules|directives?|guidelines|guardrails|prompts?|constraints|restrictions|programming|"
    r"directions|commands|context|policies|policy|orders"
)
_STOP = r"(?=\s*(?:[.,;:!\n]|$|and\b|then\b|instead\b|now\b))"

_IGNORE = re.compile(
    rf"\b(?:ignore|disregard|forget|override|bypass|neglect)\s+(?:{_FILLER}\s+){{0,3}}?(?:{_POINTER})\s+"
    rf"(?:{_FILLER}\s+){{0,2}}(?:{_RULES})\b"
    rf"|\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?(?:everything|anything|the|what(?:ever)?\s+(?:was|is))\s+"
    rf"(?:(?:said|written|stated|told|given)\s+)?(?:above|before|previously|earlier|so\s+far){_STOP}"
    r"|\bforget\s+(?:everything|all|anything)\s+(?:that\s+)?you\s+(?:were|have\s+been|'ve\s+been)\s+"
    r"(?:told|taught|instructed|programmed)"
    r"|\byour\s+new\s+(?:instructions|rules|directives)\s+(?:are|follow)\b",
    re.IGNORECASE,
)

_PROMPT_WORDS = (
    r"system\s+(?:prompt|message|instructions?)|(?:hidden|secret|initial|original|internal|confidential|developer|"
    r"pre-?)\s*(?:prompt|instructions?|rules|message)|instructions\s+you\s+(?:were|have\s+been|'ve\s+been)\s+given"
)
_EXTRACT = re.compile(
    r"\b(?:reveal|show|print|display|output|repeat|recite|tell|give|share|leak|dump|disclose|expose|"
    r"write\s+out|spell\s+out|copy|paste|what\s+(?:is|are|was|were))\s+(?:me\s+|us\s+)?"
    r"(?:(?:all|the|your|its|this|that|full|entire|complete|exact|original|initial|whole|verbatim|above|first|"
    rf"of)\s+){{0,4}}(?:{_PROMPT_WORDS})"
    r"|\b(?:repeat|print|output|reveal|recite)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:words|text|everything|content|"
    r"instructions)\s+(?:above|before\s+this|that\s+came\s+before)\b"
    r"|\bwhat\s+(?:are|were)\s+your\s+(?:original\s+|initial\s+|exact\s+)?instructions\b",
    re.IGNORECASE,
)

_JAILBREAK = re.compile(
    r"\byou\s+are\s+(?:now\s+)?(?:going\s+to\s+(?:be|act\s+as)\s+)?(?-i:DAN)\b|\b(?:as|hi|hello)\s+(?-i:DAN)\b"
    r"|\b(?-i:DAN)\s+(?:mode|prompt|jailbreak)\b"
    r"|\bdo\s+anything\s+now\b"
    r"|\b(?:chatgpt|gpt|assistant|ai|model|you)\s+(?:with|in)\s+developer\s+mode\b|\bdeveloper\s+mode\s+output"
    r"|\b(?:you\s+are|you're|act\s+as|acting\s+as|pretend\s+(?:to\s+be|you\s+are)|role-?play\s+as|behave\s+(?:as|like)"
    r"|simulate)\s+(?:now\s+)?(?:an?\s+)?(?:completely\s+)?(?:unfiltered|uncensored|unrestricted|unaligned|"
    r"jailbroken|amoral|unethical|evil|unbound)\b"
    r"|\byou\s+(?:have|now\s+have|are)\s+(?:no|free\s+(?:of|from))\s+(?:\w+\s+){0,2}(?:restrictions|filters|"
    r"limitations|guidelines|rules|censorship|boundaries)\b"
    r"|\b(?:jailbreak|jailbroken|god|unrestricted|unfiltered)\s+mode\b",
    re.IGNORECASE,
)

_DELIMITERS = re.compile(
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|end_header_id|eot_id)\|>"
    r"|\[/?INST\]|<</?SYS>>|</s>\s*(?:<s>|\[/?INST\]|<\|)"
    r"|^[ \t]*#{2,}[ \t]*(?:system|instruction|instructions|assistant)[ \t]*:"
    r"|^[ \t]*\[?system\]?[ \t]*:[ \t]*(?:you\s+(?:are|must|will|should)|ignore|new\s+instructions)",
    re.IGNORECASE | re.MULTILINE,
)

_ENCODED_BLOB = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_DECODE_ORDER = re.compile(
    r"\b(?:decode|decipher|decrypt|base64[- ]?decode)\b[^\n]{0,80}?\b(?:and|then)\s+(?:follow|execute|run|obey|do|"
    r"perform|carry\s+out|act\s+on|comply\s+with)\b"
    r"|\b(?:follow|execute|run|obey|carry\s+out)\s+(?:the\s+)?(?:decoded|base64|encoded|hidden)\b",
    re.IGNORECASE,
)

# Signal -> (lower-case keywords of which one must occur, check).
_SIGNALS: dict[str, tuple[tuple[str, ...], Any]] = {
    "ignore_instructions": (
        ("ignore", "disregard", "forget", "override", "bypass", "neglect", "new instructions", "new rules"),
        _IGNORE.search,
    ),
    "prompt_extraction": (("prompt", "instruction", "message", "rules", "above", "before"), _EXTRACT.search),
    "jailbreak_persona": (
        ("dan", "anything now", "developer mode", "jailbr", "unfilter", "uncensor", "unrestrict", "unaligned",
         "amoral", "unethical", "evil", "unbound", "god mode", "no restrictions", "free of", "free from", "no filter",
         "no limitations", "no guidelines", "no rules", "no censorship", "no boundaries"),
        _JAILBREAK.search,
    ),
    "fake_delimiters": (("<|", "inst]", "<<sys>>", "</s>", "##", "system"), _DELIMITERS.search),
    "encoded_payload": (
        ("decode", "decipher", "decrypt", "decoded", "encoded", "base64"),
        lambda text: _DECODE_ORDER.search(text) and _ENCODED_BLOB.search(text),
    ),
}


def _user_texts(endpoint: str, body: dict) -> list[str]:
    texts: list[str] = []
    if endpoint == "chat":
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict) or message.get("role") not in _USER_ROLES:
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(
                    part["text"]
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                )
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            texts.append(prompt)
        elif isinstance(prompt, list):
            texts.extend(p for p in prompt if isinstance(p, str))
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected 'chat' or 'completions'")
    return texts


def injection_signals(endpoint: str, body: dict) -> list[str]:
    """Names of the heuristics (in ``INJECTION_SIGNALS`` order) matched by the user-supplied text of an OpenAI-style
    request; ``[]`` when none. ``endpoint`` is ``"chat"`` or ``"completions"``."""
    texts = _user_texts(endpoint, body)
    if not texts:
        return []
    text = "\n".join(texts)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    lowered = text.lower()
    return [
        name
        for name, (keywords, check) in _SIGNALS.items()
        if any(k in lowered for k in keywords) and check(text)
    ]
