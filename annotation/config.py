"""The Label Studio labeling config for MMStar-style review, generated from the taxonomy.

Why generated: the 18 dimensions are data (``data/taxonomy.toml``); a hand-kept XML copy would
drift from them. The control names below are the contract between the config, the
pre-annotations (``annotation.tasks``) and the verdict parser (``annotation.verdicts``).

What a reviewer sees per task, on one 1440x900 screen: the image(s) side by side and numbered on
the left; the hint (only when there is one), the question, the options with the key marked and the
central questions in the middle; the evidence (what the text-only panel answered, how many vision
models solved it, the suggested dimension with its real probability) and the dimension on the
right. The central questions ("needs the image", "key correct") are never pre-answered.

Keyboard (Label Studio gives every Choice WITHOUT a hotkey one of its own, so every Choice here
has an explicit one): ``y``/``n`` needs the image, ``k``/``x`` key right/wrong, the item's own
option letters (lower case) for the corrected key, dimensions by number within their capability
(capabilities 1-3: keys 1-9, capabilities 4-6: shift+1-9). No key does two things.

Version contract: ``CONFIG_VERSION`` changes when the XML changes (controls, data fields read,
layout or CSS), because ``annotation.client.ensure_project`` refuses a project whose stored config
differs. Suspect keys (issue #18) needed no change: their evidence travels inside ``options_html``
(inline styles) and the reviewer answers the existing ``key_correct`` question, so the config is
still v2 and projects made before item-stats keep accepting pushes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from curate.schema import LETTERS
from curate.taxonomy import Taxonomy, default_taxonomy

CONFIG_VERSION = 2
#: Marker the client looks for to recognise a project as ours (an invisible element, not a title).
MARKER = f"mmcurate-review-v{CONFIG_VERSION}"

# Control names (from_name in results) and the object they point at (to_name).
NEEDS_IMAGE = "needs_image"
DIMENSION = "dimension"
KEY_CORRECT = "key_correct"
CORRECTED_KEY = "corrected_key"
COMMENT = "comment"
CONTROLS = (NEEDS_IMAGE, DIMENSION, KEY_CORRECT, CORRECTED_KEY, COMMENT)
TO_NAME = "question"
YES, NO = "yes", "no"
#: Task data field holding this item's own letters as dynamic choices (``[{"value": "A"}, ...]``).
LETTER_CHOICES = "letter_choices"

# Task data fields the config reads ($name).
DATA_FIELDS = ("item_id", "images_html", "hint_html", "question", "options_html", "evidence_html", LETTER_CHOICES)

#: Hotkeys of the two central questions and the words shown beside them.
NEEDS_IMAGE_CHOICES = ((YES, "y", "yes, it needs the image"), (NO, "n", "no, answerable without it"))
KEY_CHOICES = ((YES, "k", "key is right"), (NO, "x", "key is wrong"))

_CSS = """
.mmc-row { display: flex; gap: 14px; align-items: flex-start; }
.mmc-left { flex: 0 0 40%; max-width: 40%; }
.mmc-mid { flex: 1 1 0; min-width: 0; }
.mmc-right { flex: 0 0 27%; max-width: 27%; font-size: 13px; }
.mmc-imgs { display: flex; flex-wrap: wrap; gap: 6px; }
.mmc-imgs figure { margin: 0; flex: 1 1 45%; min-width: 0; }
.mmc-imgs figure:only-child { flex-basis: 100%; }
.mmc-imgs figure:only-child img { width: 100%; max-height: 640px; }
.mmc-imgs img { max-width: 100%; max-height: 560px; object-fit: contain; display: block; border: 1px solid #ddd; }
.mmc-imgs .mmc-bg { width: 100%; height: 300px; background: no-repeat center / contain; border: 1px solid #ddd; }
.mmc-imgs figure:only-child .mmc-bg { height: 560px; }
.mmc-imgs figcaption { font-weight: 600; font-size: 13px; }
.mmc-hint { background: #fff8e1; padding: 4px 8px; border-radius: 4px; margin-bottom: 6px; }
.mmc-opts { margin: 0; padding: 0; list-style: none; }
.mmc-opts li { padding: 2px 6px; border-radius: 4px; }
.mmc-opts li.mmc-key { background: #e3f2e1; border: 1px solid #5a9e52; font-weight: 600; }
.mmc-opts .mmc-keytag { background: #2e7d32; color: #fff; border-radius: 3px; padding: 0 5px; margin-left: 6px; font-size: 11px; }
.mmc-ev table { border-collapse: collapse; width: 100%; }
.mmc-ev td, .mmc-ev th { border-bottom: 1px solid #eee; padding: 1px 4px; text-align: left; }
.mmc-ev .mmc-hit { color: #2e7d32; } .mmc-ev .mmc-miss { color: #b71c1c; }
.mmc-id { color: #888; font-size: 11px; }
.mmc-q { font-size: 15px; }
.mmc-marker { display: none; }
.mmc-row h4 { font-size: 14px !important; margin: 6px 0 2px !important; line-height: 1.3 !important; }
.mmc-right h4 { font-size: 13px !important; margin: 4px 0 0 !important; }
.mmc-row .lsf-choice { margin: 0 !important; }
.mmc-right .ant-radio-wrapper { font-size: 12px !important; line-height: 1.3 !important; }
.mmc-dims .lsf-choices > div, .mmc-dims > div { margin: 0 !important; }
.mmc-row textarea { min-height: 30px; }
"""


def _header(parent: ET.Element, text: str, size: str = "5") -> None:
    ET.SubElement(parent, "Header", value=text, size=size)


def _choices(parent: ET.Element, name: str, options: tuple[tuple[str, str, str], ...], **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, "Choices", name=name, toName=TO_NAME, choice="single-radio", showInline="true", **attrs)
    for value, hotkey, words in options:
        ET.SubElement(el, "Choice", value=value, alias=value, hotkey=hotkey, html=words)
    return el


def dimension_hotkeys(taxonomy: Taxonomy) -> dict[str, str]:
    """``{dimension: hotkey}``: the n-th dimension of the first 9 gets ``n``, the rest ``shift+n``.

    With MMStar's 6 capabilities x 3 dimensions this is "by number within the capability":
    capability 1 keys 1-3, capability 2 keys 4-6, ..., capability 4 shift+1-3, and so on.
    """
    keys = {}
    for i, dim in enumerate(taxonomy.dimensions):
        n = i % 9 + 1
        keys[dim.name] = str(n) if i < 9 else f"shift+{n}"
        if i >= 18:
            keys[dim.name] = ""  # more than 18 dimensions: no hotkey rather than a clash
    return keys


def labeling_config(taxonomy: Taxonomy | None = None, *, letters: str = LETTERS) -> str:
    """The labeling config XML (a string Label Studio validates on project creation).

    ``letters`` is kept for callers of version 1; the corrected key now offers each item's own
    letters (task field ``letter_choices``), so a 4-option item never offers E-J.
    """
    del letters
    tax = taxonomy or default_taxonomy()
    root = ET.Element("View")
    ET.SubElement(root, "Style").text = _CSS
    row = ET.SubElement(root, "View", className="mmc-row")

    left = ET.SubElement(row, "View", className="mmc-left")
    ET.SubElement(left, "HyperText", name="images", value="$images_html", inline="true")

    mid = ET.SubElement(row, "View", className="mmc-mid")
    ET.SubElement(mid, "HyperText", name="hint", value="$hint_html", inline="true")
    ET.SubElement(mid, "Text", name=TO_NAME, value="$question", className="mmc-q")
    ET.SubElement(mid, "HyperText", name="options", value="$options_html", inline="true")
    _header(mid, "Does answering need the image?")
    _choices(mid, NEEDS_IMAGE, NEEDS_IMAGE_CHOICES, required="true", requiredMessage="Answer 'Does answering need the image?' (y or n) before submitting.")
    _header(mid, "Is the marked key right?")
    _choices(mid, KEY_CORRECT, KEY_CHOICES, required="true", requiredMessage="Answer 'Is the marked key right?' (k or x) before submitting.")
    fix = ET.SubElement(mid, "View", visibleWhen="choice-selected", whenTagName=KEY_CORRECT, whenChoiceValue=NO)
    _header(fix, "Which option is right? (press its letter)", "6")
    ET.SubElement(fix, "Choices", name=CORRECTED_KEY, toName=TO_NAME, choice="single-radio", showInline="true", value=f"${LETTER_CHOICES}")
    _header(mid, "Comment (optional)", "6")
    ET.SubElement(mid, "TextArea", name=COMMENT, toName=TO_NAME, rows="1", maxSubmissions="1", editable="true", placeholder="Why, if the answer is not obvious")
    ET.SubElement(mid, "HyperText", name="item_id", value="$item_id_html", inline="true")

    right = ET.SubElement(row, "View", className="mmc-right mmc-dims")
    ET.SubElement(right, "HyperText", name="evidence", value="$evidence_html", inline="true")
    _header(right, "Which dimension does it test?")
    dims = ET.SubElement(right, "Choices", name=DIMENSION, toName=TO_NAME, choice="single-radio", required="true", requiredMessage="Pick the dimension the item tests before submitting.")
    keys = dimension_hotkeys(tax)
    for c, cap in enumerate(tax.capabilities, 1):
        group = ET.SubElement(dims, "View")
        ET.SubElement(group, "Header", value=f"{c}. {cap.name}", size="6")
        for dim in cap.dimensions:
            hk = keys[dim.name]
            ET.SubElement(group, "Choice", value=dim.name, alias=dim.name, hotkey=hk, hint=dim.description)
    ET.SubElement(root, "View", className=f"mmc-marker {MARKER}")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode")


def control_names(config_xml: str) -> dict[str, str]:
    """``{control name: tag}`` for every element with a ``toName`` in ``config_xml``."""
    root = ET.fromstring(config_xml)
    return {el.get("name"): el.tag for el in root.iter() if el.get("toName") is not None and el.get("name")}


def dimension_choices(config_xml: str) -> list[str]:
    """The dimension values offered by a config (used by tests and to check a project is current)."""
    root = ET.fromstring(config_xml)
    for el in root.iter("Choices"):
        if el.get("name") == DIMENSION:
            return [c.get("value") for c in el.iter("Choice")]
    return []


def hotkeys(config_xml: str) -> dict[str, list[str]]:
    """``{hotkey: [control/value, ...]}`` of every explicit Choice hotkey (a clash has two entries)."""
    out: dict[str, list[str]] = {}
    for el in ET.fromstring(config_xml).iter("Choices"):
        for c in el.iter("Choice"):
            if c.get("hotkey"):
                out.setdefault(c.get("hotkey"), []).append(f"{el.get('name')}/{c.get('value')}")
    return out


def is_ours(config_xml: str) -> bool:
    """True when ``config_xml`` was generated by this module (any taxonomy, this config version)."""
    try:
        root = ET.fromstring(config_xml)
    except ET.ParseError:
        return False
    has_marker = any(MARKER in (el.get("className") or "").split() for el in root.iter("View"))
    return has_marker and set(CONTROLS) <= set(control_names(config_xml))
