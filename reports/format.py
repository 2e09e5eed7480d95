"""How numbers are written in the report: one place, so the HTML, the Markdown and the tests
agree. Missing values are written as an em dash, an unreachable target as ∞."""

from __future__ import annotations

import math
import re

import pandas as pd

MISSING = "—"
# Names the report shows for timm ids (figures, tables, text); the config's ``display_names`` adds or replaces.
DISPLAY_NAMES = {
    "mobilevit_xxs": "MobileViT-XXS",
    "mobilevit_xs": "MobileViT-XS",
    "mobilevit_s": "MobileViT-S",
    "mobilenetv2_100": "MobileNetV2",
    "mobilenetv3_small_100": "MobileNetV3-S",
    "mobilenetv3_large_100": "MobileNetV3-L",
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "efficientnet_b0": "EfficientNet-B0",
    "convnext_atto": "ConvNeXt-Atto",
    "vit_tiny_patch16_224": "ViT-Ti/16",
}


def is_missing(v) -> bool:
    """None, NaN or pandas' NA."""
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or other non-scalar is a value
        return False


def pct(v, digits: int = 1) -> str:
    """0.8531 -> '85.3%'."""
    return MISSING if is_missing(v) else f"{100 * float(v):.{digits}f}%"


def pp(v, digits: int = 1) -> str:
    """A difference of accuracies in percentage points, signed: 0.021 -> '+2.1 pp'."""
    return MISSING if is_missing(v) else f"{100 * float(v):+.{digits}f} pp"


def count(v) -> str:
    """A number of images (rounded, thousands separated); inf -> '∞'."""
    if is_missing(v):
        return MISSING
    v = float(v)
    return "∞" if math.isinf(v) else f"{round(v):,}"


def num(v, digits: int = 3) -> str:
    """A general number with ``digits`` significant digits; inf -> '∞'."""
    if is_missing(v):
        return MISSING
    v = float(v)
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return f"{v:.{digits}g}"


def three(v, sign: bool = False) -> str:
    """A score or a difference of scores in the report's one format for them: three decimals,
    signed when ``sign``: 0.8921 -> '0.892', -0.0634 -> '-0.063'."""
    return MISSING if is_missing(v) else f"{float(v):{'+' if sign else ''}.3f}"


def pvalue(v) -> str:
    """'<0.001' below a thousandth, else three decimals."""
    if is_missing(v):
        return MISSING
    return "<0.001" if float(v) < 0.001 else f"{float(v):.3f}"


def seconds(v) -> str:
    if is_missing(v):
        return MISSING
    v = float(v)
    return f"{v:.2f} s" if v < 10 else (f"{v:.1f} s" if v < 600 else f"{v / 60:.1f} min")


def millions(v) -> str:
    """Parameters or MACs: 3_504_872 -> '3.50 M'; small counts in thousands."""
    if is_missing(v):
        return MISSING
    v = float(v)
    if v >= 1e9:
        return f"{v / 1e9:.2f} G"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    return f"{v / 1e3:.1f} k"


def interval(lo, hi, fmt=pct) -> str:
    """'[lo, hi]' with the given formatter, or the missing mark."""
    if is_missing(lo) or is_missing(hi):
        return MISSING
    return f"[{fmt(lo)}, {fmt(hi)}]"


def pp_interval(lo, hi) -> str:
    """An interval of differences in percentage points, the unit written once: '[+0.2, +1.8] pp'."""
    if is_missing(lo) or is_missing(hi):
        return MISSING
    return f"[{100 * float(lo):+.1f}, {100 * float(hi):+.1f}] pp"


def p_is(v) -> str:
    """A p-value in a sentence: 'p = 0.034' or 'p < 0.001'."""
    text = pvalue(v)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def p_with_holm(p, p_holm) -> str:
    """A table cell holding a p-value and its Holm-adjusted value: '0.012 (0.047)'."""
    return MISSING if is_missing(p) else f"{pvalue(p)} ({pvalue(p_holm)})"


def named(text, names: dict[str, str]) -> str:
    """``text`` with each model id in ``names`` that stands as a whole word written as its display
    name: the analysis writes its sentences (ratios, crossovers) with the ids the runs store."""
    ids = sorted((m for m, name in names.items() if m != name), key=len, reverse=True)
    if is_missing(text) or not ids:
        return text
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, ids)) + r")(?![\w-])")
    return pattern.sub(lambda m: names[m.group(1)], str(text))


def md_cell(v) -> str:
    """Text made safe for GitHub Markdown, in a table cell or a paragraph: one line, pipes
    escaped, and a '<' that could open an HTML tag written as an entity."""
    text = str(v).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def join_words(items: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 model', '3 models'."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def display_names(config: dict | None, models) -> dict[str, str]:
    """The report's name of each model: the study's ``display_names``, else the readable default
    of ``DISPLAY_NAMES``, else the timm id itself."""
    chosen = {**DISPLAY_NAMES, **((config or {}).get("display_names") or {})}
    return {m: chosen.get(m, m) for m in models}


FILTERS = {
    "pct": pct,
    "pp": pp,
    "count": count,
    "num": num,
    "pvalue": pvalue,
    "seconds": seconds,
    "millions": millions,
    "md": md_cell,
    "named": named,
    "three": three,
}
