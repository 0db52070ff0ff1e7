"""Prompt-injection HEURISTICS for the user-supplied text of a request.

These are cheap pattern checks for well-known injection phrasings, meant to flag, count and log requests (by signal
name, never by text). They are not a guarantee: a determined attacker rewords, misspells, translates or encodes the
attack and gets past them, and an honest prompt that quotes an attack (a security write-up, a question about
jailbreaks) sets them off. Treat a signal as a hint for monitoring or for a stricter policy, not as proof.

Signals (``INJECTION_SIGNALS``):

* ``ignore_instructions``: "ignore/disregard/forget/override all previous|prior|above|system instructions",
  "ignore the above and ...", "forget everything you were told", "your new instructions are".
* ``prompt_extraction``: "reveal/print/repeat/show your system prompt", "... your hidden instructions",
  "repeat the words above", "what are your instructions".
* ``jailbreak_persona``: role-play jailbreak markers: "you are now DAN", "Do Anything Now", "ChatGPT with Developer
  Mode", "Developer Mode output", "act as an unfiltered/uncensored AI", "you have no restrictions".
* ``fake_delimiters``: chat-template or role markers inside user content: ``<|im_start|>system``, ``<|eot_id|>``,
  ``[INST]``, ``<<SYS>>``, ``</s><s>``, "### System:", a line "System: you are/must ...".
* ``encoded_payload``: a long base64-looking blob together with an instruction to decode it and follow/execute it.

Only user-supplied text is looked at: chat messages with role ``user``, ``tool`` or ``function`` (string content or
``{"type": "text"}`` parts), or the completions ``prompt``. Zero-width characters are dropped and non-ASCII text is
NFKC-normalised first (full-width letters, ligatures). Cost: the text is lower-cased and split into a word set once;
a signal's regex (compiled once, matched against the lower-cased text, which is several times faster than
IGNORECASE) only runs when the words it needs are present.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable

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
_PUNCT_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation, " "))

# All patterns but _DAN are written in lower case and matched against the lower-cased text.

# Words between the verb and the noun of "ignore all previous instructions". At least one must be a _POINTER: "ignore
# the rules" or "ignore the typo in my previous message" is no injection.
_POINTER = (
    r"all|any|every|your|previous|prior|above|earlier|preceding|foregoing|initial|original|existing|system|"
    r"developer|safety|old|given|other"
)
_FILLER = rf"(?:the|my|these|those|this|that|of|its|their|our|{_POINTER})"
_RULES = (
    r"instructions?|rules|directives?|guidelines|guardrails|prompts?|constraints|restrictions|programming|"
    r"directions|commands|context|policies|policy|orders"
)
_STOP = r"(?=\s*(?:[.,;:!\n]|$|and\b|then\b|instead\b|now\b))"  # "ignore the above." but not "the above typo"

_IGNORE = re.compile(
    rf"\b(?:ignore|disregard|forget|override|bypass|neglect)\s+(?:{_FILLER}\s+){{0,3}}?(?:{_POINTER})\s+"
    rf"(?:{_FILLER}\s+){{0,2}}(?:{_RULES})\b"
    rf"|\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?(?:everything|anything|the|what(?:ever)?\s+(?:was|is))\s+"
    rf"(?:(?:said|written|stated|told|given)\s+)?(?:above|before|previously|earlier|so\s+far){_STOP}"
    r"|\bforget\s+(?:everything|all|anything)\s+(?:that\s+)?you\s+(?:were|have\s+been|'ve\s+been)\s+"
    r"(?:told|taught|instructed|programmed)"
    r"|\byour\s+new\s+(?:instructions|rules|directives)\s+(?:are|follow)\b"
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
    r"|\bwhat\s+(?:are|were)\s+your\s+(?:original\s+|initial\s+|exact\s+)?instructions\b"
)

# "DAN" must be upper case ("Dan" is a name); only searched, in the original text, when "DAN" occurs in it.
_DAN = re.compile(
    r"\b(?i:you\s+are\s+(?:now\s+)?(?:going\s+to\s+(?:be|act\s+as)\s+)?)DAN\b|\b(?i:as|hi|hello)\s+DAN\b"
    r"|\bDAN\s+(?i:mode|prompt|jailbreak)\b"
)
_JAILBREAK = re.compile(
    r"\bdo\s+anything\s+now\b"
    r"|\b(?:chatgpt|gpt|assistant|ai|model|you)\s+(?:with|in)\s+developer\s+mode\b|\bdeveloper\s+mode\s+output"
    r"|\b(?:you\s+are|you're|act\s+as|acting\s+as|pretend\s+(?:to\s+be|you\s+are)|role-?play\s+as|behave\s+(?:as|like)"
    r"|simulate)\s+(?:now\s+)?(?:an?\s+)?(?:completely\s+)?(?:unfiltered|uncensored|unrestricted|unaligned|"
    r"jailbroken|amoral|unethical|evil|unbound)\b"
    r"|\byou\s+(?:have|now\s+have|are)\s+(?:no|free\s+(?:of|from))\s+(?:\w+\s+){0,2}(?:restrictions|filters|"
    r"limitations|guidelines|rules|censorship|boundaries)\b"
    r"|\b(?:jailbreak|jailbroken|god|unrestricted|unfiltered)\s+mode\b"
)

_DELIMITERS = re.compile(
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|end_header_id|eot_id)\|>"
    r"|\[/?inst\]|<</?sys>>|</s>\s*(?:<s>|\[/?inst\]|<\|)"
    r"|^[ \t]*#{2,}[ \t]*(?:system|instructions?|assistant)[ \t]*:"
    r"|^[ \t]*\[?system\]?[ \t]*:[ \t]*(?:you\s+(?:are|must|will|should)|ignore|new\s+instructions)",
    re.MULTILINE,
)

_ENCODED_BLOB = re.compile(r"(?<![a-z0-9+/])[a-z0-9+/]{40,}={0,2}(?![a-z0-9+/=])")
_DECODE_ORDER = re.compile(
    r"\b(?:decode|decipher|decrypt)\b[^\n]{0,80}?\b(?:and|then)\s+(?:follow|execute|run|obey|do|perform|"
    r"carry\s+out|act\s+on|comply\s+with)\b"
    r"|\b(?:follow|execute|run|obey|carry\s+out)\s+(?:the\s+)?(?:decoded|base64|encoded|hidden)\b"
)

# Word gates: the words (from the lower-cased text, punctuation turned into spaces) a signal's regex cannot match
# without.
# fmt: off
_IGNORE_VERBS = frozenset({"ignore", "disregard", "forget", "override", "bypass", "neglect"})
_NEW_RULES = frozenset({"instructions", "rules", "directives"})
_EXTRACT_VERBS = frozenset({
    "reveal", "show", "print", "display", "output", "repeat", "recite", "tell", "give", "share", "leak", "dump",
    "disclose", "expose", "write", "spell", "copy", "paste", "what",
})
_EXTRACT_NOUNS = frozenset({
    "prompt", "preprompt", "instructions", "instruction", "message", "rules", "above", "before",
})
_PERSONA_WORDS = frozenset({
    "anything", "developer", "unfiltered", "uncensored", "unrestricted", "unaligned", "jailbroken", "jailbreak",
    "amoral", "unethical", "evil", "unbound", "god",
})
_LIMIT_NOUNS = frozenset({"restrictions", "filters", "limitations", "guidelines", "rules", "censorship", "boundaries"})
_DECODE_WORDS = frozenset({"decode", "decipher", "decrypt", "decoded", "base64", "encoded", "hidden"})
# fmt: on


def _ignore(lowered: str, words: set[str], text: str) -> bool:
    gate = not _IGNORE_VERBS.isdisjoint(words) or ("new" in words and not _NEW_RULES.isdisjoint(words))
    return gate and _IGNORE.search(lowered) is not None


def _extraction(lowered: str, words: set[str], text: str) -> bool:
    gate = not _EXTRACT_VERBS.isdisjoint(words) and not _EXTRACT_NOUNS.isdisjoint(words)
    return gate and _EXTRACT.search(lowered) is not None


def _persona(lowered: str, words: set[str], text: str) -> bool:
    if "DAN" in text and _DAN.search(text):
        return True
    gate = not _PERSONA_WORDS.isdisjoint(words) or ("you" in words and not _LIMIT_NOUNS.isdisjoint(words))
    return gate and _JAILBREAK.search(lowered) is not None


def _delimiters(lowered: str, words: set[str], text: str) -> bool:
    gate = "<" in text or "[" in text or "#" in text or "system" in words
    return gate and _DELIMITERS.search(lowered) is not None


def _encoded(lowered: str, words: set[str], text: str) -> bool:
    if _DECODE_WORDS.isdisjoint(words) or _DECODE_ORDER.search(lowered) is None:
        return False
    return _ENCODED_BLOB.search(lowered) is not None


_CHECKS: tuple[tuple[str, Callable[[str, set[str], str], bool]], ...] = (
    ("ignore_instructions", _ignore),
    ("prompt_extraction", _extraction),
    ("jailbreak_persona", _persona),
    ("fake_delimiters", _delimiters),
    ("encoded_payload", _encoded),
)


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
    request body; ``[]`` when none. ``endpoint`` is ``"chat"`` or ``"completions"``."""
    texts = _user_texts(endpoint, body)
    if not texts:
        return []
    text = "\n".join(texts)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    lowered = text.lower()
    words = set(lowered.translate(_PUNCT_TO_SPACE).split())
    return [name for name, check in _CHECKS if check(lowered, words, text)]
