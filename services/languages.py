"""Which model locale a session's `language=` asks for (prompt-conditioned models: Nemotron 3.5 ASR).

Clients send BCP-47 as Pipecat's `Language` gives it: a full tag (`es-ES`, `en-GB`) or a base code
(`es`). A full tag the model serves is used as it is (case-insensitive); a base code, or a tag of a
locale the model does not serve, maps to the language's default locale in `DEFAULT_LOCALE`, if the model
serves it, else to the model's only locale of that language. `auto` asks the model to detect the
language (where its prompt dictionary has `auto`). docs/protocol.md has the table.
"""

from __future__ import annotations

from typing import Optional

AUTO = "auto"

# Base code -> the locale a bare code means. Nemotron 3.5 ASR's 40 locales; where a language has two
# (en-US/en-GB, es-ES/es-US, fr-FR/fr-CA, pt-BR/pt-PT, nb-NO/nn-NO) the first is the default.
DEFAULT_LOCALE = {
    "en": "en-US", "es": "es-ES", "de": "de-DE", "fr": "fr-FR", "it": "it-IT", "pt": "pt-BR", "nl": "nl-NL",
    "ar": "ar-AR", "ja": "ja-JP", "ko": "ko-KR", "ru": "ru-RU", "hi": "hi-IN", "zh": "zh-CN", "vi": "vi-VN",
    "he": "he-IL", "cs": "cs-CZ", "da": "da-DK", "pl": "pl-PL", "nb": "nb-NO", "no": "nb-NO", "nn": "nn-NO",
    "sv": "sv-SE", "th": "th-TH", "tr": "tr-TR", "bg": "bg-BG", "el": "el-GR", "et": "et-EE", "fi": "fi-FI",
    "hr": "hr-HR", "hu": "hu-HU", "lt": "lt-LT", "lv": "lv-LV", "ro": "ro-RO", "sk": "sk-SK", "uk": "uk-UA",
    "mt": "mt-MT", "sl": "sl-SI",
}


# Nemotron 3.5 ASR's prompt locales as its card lists them (index 0 = en-US, NeMo's default prompt),
# then `auto`. For the `random:nemotron-3.5-0.6b` spec only: a served model's own prompt dictionary
# (read from its .nemo) is what a worker serves.
NEMOTRON_35_LOCALES = (
    "en-US", "en-GB", "es-US", "es-ES", "de-DE", "fr-FR", "fr-CA", "it-IT", "ar-AR", "ja-JP", "ko-KR", "pt-BR",
    "pt-PT", "ru-RU", "hi-IN", "zh-CN", "vi-VN", "he-IL", "nl-NL", "cs-CZ", "da-DK", "pl-PL", "nn-NO", "nb-NO",
    "sv-SE", "th-TH", "tr-TR", "bg-BG", "el-GR", "et-EE", "fi-FI", "hr-HR", "hu-HU", "lt-LT", "lv-LV", "ro-RO",
    "sk-SK", "uk-UA", "mt-MT", "sl-SI", AUTO,
)


def resolve_locale(requested: str, locales: tuple[str, ...]) -> Optional[str]:
    """The served locale `requested` means, or None when the model serves no such language."""
    want = requested.strip().replace("_", "-")
    by_lower = {loc.lower(): loc for loc in locales}
    if want.lower() in by_lower:
        return by_lower[want.lower()]
    base = want.split("-")[0].lower()
    default = DEFAULT_LOCALE.get(base)
    if default is not None and default.lower() in by_lower:
        return by_lower[default.lower()]
    same = [loc for loc in locales if loc.split("-")[0].lower() == base and loc != AUTO]
    return same[0] if len(same) == 1 else None


def refusal(requested: str, model: str, locales: tuple[str, ...]) -> str:
    """The one-line answer to a language the model does not serve: what it does serve."""
    return f"language {requested!r} is not served by {model}; use one of {list(locales)}"
