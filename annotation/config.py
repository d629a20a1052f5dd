"""The Label Studio labeling config for MMStar-style review, generated from the taxonomy.

Why generated: the 18 dimensions are data (``data/taxonomy.toml``); a hand-kept XML copy would
drift from them. The control names below are the contract between the config, the
pre-annotations (``annotation.tasks``) and the verdict parser (``annotation.verdicts``).

What a reviewer sees per task: the image(s), the hint, the question, the options with the key
marked, and the screening panel's evidence; what they answer: does it need the image, which
dimension it tests (grouped by capability), is the key right (else which letter is), a comment.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from curate.schema import LETTERS
from curate.taxonomy import Taxonomy, default_taxonomy

CONFIG_VERSION = 1
#: Marker the client looks for to recognise a project as ours.
MARKER = f"mmcurate review config v{CONFIG_VERSION}"

# Control names (from_name in results) and the object they point at (to_name).
NEEDS_IMAGE = "needs_image"
DIMENSION = "dimension"
KEY_CORRECT = "key_correct"
CORRECTED_KEY = "corrected_key"
COMMENT = "comment"
CONTROLS = (NEEDS_IMAGE, DIMENSION, KEY_CORRECT, CORRECTED_KEY, COMMENT)
TO_NAME = "question"
YES, NO = "yes", "no"

# Task data fields the config reads ($name).
DATA_FIELDS = ("item_id", "images", "hint", "question", "options_text", "evidence")


def labeling_config(taxonomy: Taxonomy | None = None, *, letters: str = LETTERS) -> str:
    """The labeling config XML (a string Label Studio validates on project creation).

    Dimensions are single-choice radios grouped under one header per capability; the corrected
    key (``letters``) shows only when a reviewer says the key is wrong.
    """
    tax = taxonomy or default_taxonomy()
    root = ET.Element("View")
    ET.SubElement(root, "Header", value=MARKER, size="6")
    ET.SubElement(root, "Text", name="item_id", value="$item_id")
    ET.SubElement(root, "Image", name="image", valueList="$images")
    ET.SubElement(root, "Header", value="Hint", size="5")
    ET.SubElement(root, "Text", name="hint", value="$hint")
    ET.SubElement(root, "Header", value="Question", size="5")
    ET.SubElement(root, "Text", name=TO_NAME, value="$question")
    ET.SubElement(root, "Header", value="Options (the key is marked)", size="5")
    ET.SubElement(root, "Text", name="options", value="$options_text")
    ET.SubElement(root, "Header", value="Screening evidence (text-only panel, image withheld)", size="5")
    ET.SubElement(root, "Text", name="evidence", value="$evidence")

    ET.SubElement(root, "Header", value="Does answering need the image?", size="4")
    needs = ET.SubElement(root, "Choices", name=NEEDS_IMAGE, toName=TO_NAME, choice="single-radio", required="true", showInline="true")
    ET.SubElement(needs, "Choice", value=YES)
    ET.SubElement(needs, "Choice", value=NO)

    ET.SubElement(root, "Header", value="Is the marked key correct?", size="4")
    key = ET.SubElement(root, "Choices", name=KEY_CORRECT, toName=TO_NAME, choice="single-radio", required="true", showInline="true")
    ET.SubElement(key, "Choice", value=YES)
    ET.SubElement(key, "Choice", value=NO)
    fix = ET.SubElement(
        root,
        "View",
        visibleWhen="choice-selected",
        whenTagName=KEY_CORRECT,
        whenChoiceValue=NO,
    )
    ET.SubElement(fix, "Header", value="Correct option letter", size="5")
    corrected = ET.SubElement(fix, "Choices", name=CORRECTED_KEY, toName=TO_NAME, choice="single-radio", showInline="true")
    for letter in letters:
        ET.SubElement(corrected, "Choice", value=letter)

    ET.SubElement(root, "Header", value="Which dimension does it test?", size="4")
    dims = ET.SubElement(root, "Choices", name=DIMENSION, toName=TO_NAME, choice="single-radio", required="true")
    for cap in tax.capabilities:
        group = ET.SubElement(dims, "View")
        ET.SubElement(group, "Header", value=cap.name, size="6")
        for dim in cap.dimensions:
            ET.SubElement(group, "Choice", value=dim.name, hint=dim.description)

    ET.SubElement(root, "Header", value="Comment (optional)", size="5")
    ET.SubElement(root, "TextArea", name=COMMENT, toName=TO_NAME, rows="2", maxSubmissions="1", editable="true")
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


def is_ours(config_xml: str) -> bool:
    """True when ``config_xml`` was generated by this module (any taxonomy, this config version)."""
    try:
        root = ET.fromstring(config_xml)
    except ET.ParseError:
        return False
    has_marker = any(el.get("value") == MARKER for el in root.iter("Header"))
    return has_marker and set(CONTROLS) <= set(control_names(config_xml))
