"""Prompt templates P0..P9 per dataset family, class names, general descriptions, value vocabularies.

This module is the single place that holds the *data* of the paper's prompt design (Appendix G,
Table 2/9, Table 10 of the arXiv version): the short template words, the class names, and the
five general descriptions of each photographic dataset. Everything else is code.

Families
--------
* ``non_radiology`` (kvasir, clinicdb, bkai, etis, colondb, cvc300, isic, dfu): P1 class, P2 +shape,
  P3 +colour, P4 +size, P5 +number, P6 +location, P7 class + general description, P8 P5 + general
  description, P9 P8 + location. P7..P9 are lists, one entry per general description (training
  picks one at random). More than one target makes the class name plural in the prompts that
  carry the number word ("two small ... polyps"; P1..P4 and P7 keep the singular class keyword).
* ``busi``: P1 class, P2 +tumour type, P3 +number, P4 +size, P5 +location, P6 +shape; P2..P6 are
  two-entry lists (tumour type as "benign"/"malignant", or as the outline regularity it implies,
  "regular-shaped"/"irregular-shaped"). Normal images (tumour type "normal" or no target) get
  "No tumor in the breast ultrasound image." for P1..P6.
* ``camus``: P1 structure, P2 +view, P3 +cardiac cycle, P4 +sex, P5 +age, P6 +image quality,
  P7 +shape; each a two-entry list ("of the heart" / "in the cardiac ultrasound").
* ``chexlocalize``: P1 pathology, P2 +view, P3 +shape, P4 +location, P5 +other pathologies present,
  P6 pathology + other pathologies present.

Attributes (the record's ``"attributes"`` dict, see ``make_prompts.py``) drive the templates; an
attribute that is missing or ``None`` is left out of the sentence (this is also how
``perturb_prompts.py`` drops one). Per-target lists (``size``, ``location``) are rendered with
their distinct values in order: sizes joined by " and ", locations by ", " (paper's BUSI example
"at the center, left").
"""
from __future__ import annotations

from .registry import DATASETS

ENDOSCOPY = tuple(n for n, d in DATASETS.items() if d.kind == "endoscopy")
FAMILY = {n: d.family for n, d in DATASETS.items() if d.family != "synthetic"}
CLASS_NAMES = {n: d.class_name for n, d in DATASETS.items() if d.family in ("non_radiology", "busi")}

# Five general class descriptions per photographic dataset group (paper, Table 10 / arXiv Table 9).
_POLYP_DESCRIPTIONS = (
    "a projecting growth of tissue",
    "often a bumpy flesh in rectum",
    "a small lump in the lining of colon",
    "a tissue growth that often resemble mushroom-like stalks",
    "an abnormal growth of tissues projecting from a mucous membrane",
)
GENERAL_DESCRIPTIONS = {
    **{name: _POLYP_DESCRIPTIONS for name in ENDOSCOPY},
    "isic": (
        "a spot with dark speckles",
        "a spot with irregular texture",
        "a dark sore with irregular texture",
        "an irregular sore with speckles",
        "a rough wound on skin",
    ),
    "dfu": (
        "a wound in foot and toes",
        "a sore in foot and toes",
        "a sore in skin of foot and toe",
        "an abnormality in foot and toes",
        "an open sore or lesion in foot and toes",
    ),
}

#: Every prompt key of the paper, P0 (empty) to P9.
ALL_PROMPT_KEYS = tuple(f"p{i}" for i in range(10))
#: The keys each prompt family defines.
PROMPT_KEYS = {"non_radiology": list(ALL_PROMPT_KEYS),
               "busi": [f"p{i}" for i in range(7)],
               "camus": [f"p{i}" for i in range(8)],
               "chexlocalize": [f"p{i}" for i in range(7)]}

# Value vocabularies (used by the rules, the perturbations and the tests).
NUMBER_VALUES = ("one", "two", "three", "four", "five", "many")
SIZE_VALUES = ("small", "medium", "large")
LOCATION_VALUES = ("top left", "top", "top right", "left", "center", "right",
                   "bottom left", "bottom", "bottom right")


def location_word(cy: float, cx: float, height: int, width: int) -> str:
    """Name of the 3 x 3 grid cell holding the point (row cy, column cx): the one location rule of the
    project (real masks in ``attributes``, the synthetic shapes)."""
    row = max(min(int(3 * cy / height), 2), 0)
    col = max(min(int(3 * cx / width), 2), 0)
    return LOCATION_VALUES[3 * row + col]


SHAPE_VALUES = ("round", "oval", "irregular", "rectangular")
COLOUR_VALUES = ("red", "pink", "orange", "brown", "yellow", "green", "blue", "purple",
                 "white", "grey", "black")
VIEW_VALUES = ("two-chamber", "four-chamber")
XRAY_VIEW_VALUES = ("frontal", "lateral")
CYCLE_VALUES = ("end of the diastole", "end of the systole")
SEX_VALUES = ("female", "male")
QUALITY_VALUES = ("good", "medium", "poor")
TUMOR_TYPE_VALUES = ("benign", "malignant")
CAMUS_STRUCTURES = ("left ventricular cavity", "myocardium", "left atrium cavity")
CHEX_PATHOLOGIES = ("Airspace Opacity", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity",
                    "Pleural Effusion", "Pneumothorax", "Support Devices")

#: Values each attribute can take (for "another value" perturbations).
VOCABULARY = {"number": NUMBER_VALUES, "size": SIZE_VALUES, "location": LOCATION_VALUES,
              "shape": SHAPE_VALUES, "colour": COLOUR_VALUES, "view": VIEW_VALUES + XRAY_VIEW_VALUES,
              "cycle": CYCLE_VALUES, "sex": SEX_VALUES, "image_quality": QUALITY_VALUES,
              "tumor_type": TUMOR_TYPE_VALUES}

#: Opposite values; a value without an entry gets another value of its vocabulary at random.
OPPOSITES = {
    "size": {"small": "large", "large": "small"},
    "location": {"top left": "bottom right", "bottom right": "top left", "top right": "bottom left",
                 "bottom left": "top right", "top": "bottom", "bottom": "top", "left": "right",
                 "right": "left"},
    "number": {"one": "two", "two": "one", "three": "one", "four": "one", "five": "one",
               "many": "one", "no": "one"},
    "shape": {"round": "irregular", "oval": "irregular", "irregular": "round",
              "rectangular": "round"},
    "colour": {"red": "green", "pink": "green", "green": "red", "blue": "yellow",
               "yellow": "blue", "white": "black", "black": "white", "brown": "white",
               "orange": "blue", "purple": "yellow", "grey": "red"},
    "view": {"two-chamber": "four-chamber", "four-chamber": "two-chamber",
             "frontal": "lateral", "lateral": "frontal"},
    "cycle": {"end of the diastole": "end of the systole", "end of the systole": "end of the diastole"},
    "sex": {"female": "male", "male": "female"},
    "image_quality": {"good": "poor", "poor": "good"},
    "tumor_type": {"benign": "malignant", "malignant": "benign"},
}

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def family_of(dataset: str) -> str:
    """Template family of a dataset name; clear error for unknown names."""
    try:
        return FAMILY[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}: prompt templates exist for "
                         f"{', '.join(sorted(FAMILY))}") from None


def number_to_words(n: int) -> str:
    """0..119 in English words with hyphens (46 -> "forty-six")."""
    n = int(n)
    if not 0 <= n < 120:
        raise ValueError(f"age {n} outside 0..119")
    if n >= 100:
        rest = n - 100
        return "one hundred" + ("" if rest == 0 else " and " + number_to_words(rest))
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens - 2] + ("" if unit == 0 else "-" + _UNITS[unit])


def age_phrase(age) -> str | None:
    """Age attribute -> "forty-six-year-old"; a string (e.g. a perturbation word) is kept as is."""
    if age is None:
        return None
    if isinstance(age, str) and not age.strip().isdigit():
        return age
    return f"{number_to_words(int(age))}-year-old"


def plural(noun: str) -> str:
    """Naive English plural of the last word ("foot ulcer" -> "foot ulcers")."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _distinct(values) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(str(v))
    return out


def size_phrase(size) -> str | None:
    """Per-target sizes -> "medium" or "large and small"."""
    return " and ".join(_distinct(size)) or None


def location_phrase(location) -> str | None:
    """Per-target locations -> "center" or "center, left"."""
    return ", ".join(_distinct(location)) or None


def _words(*parts) -> str:
    return " ".join(p for p in parts if p)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def non_radiology_prompts(attrs: dict, dataset: str) -> dict:
    """P0..P9 for the photographic datasets (Appendix G.1)."""
    noun = attrs.get("class_name") or CLASS_NAMES.get(dataset)
    if not noun:
        raise ValueError(f"no class name for dataset {dataset!r}: set the record's 'class_name'")
    counted = plural(noun) if attrs.get("count", 1) > 1 else noun  # with a number word only
    shape, colour = attrs.get("shape"), attrs.get("colour")
    size, number = size_phrase(attrs.get("size")), attrs.get("number")
    loc = location_phrase(attrs.get("location"))
    p5 = _words(number, size, colour, shape, counted)
    at = f" located in the {loc} of the image" if loc else ""
    descriptions = attrs.get("general_description") or GENERAL_DESCRIPTIONS.get(dataset)
    if not descriptions:
        raise ValueError(f"no general descriptions for dataset {dataset!r}")
    return {
        "p0": "",
        "p1": noun,
        "p2": _words(shape, noun),
        "p3": _words(colour, shape, noun),
        "p4": _words(size, colour, shape, noun),
        "p5": p5,
        "p6": p5 + ("," + at if at else ""),
        "p7": [f"{noun}, which is {d}" for d in descriptions],
        "p8": [f"{p5}, which is {d}" for d in descriptions],
        "p9": [f"{p5}, which is {d}{at}" for d in descriptions],
    }


def busi_prompts(attrs: dict) -> dict:
    """P0..P6 for BUSI (Appendix G.2.3); normal images get the "No tumor" sentence."""
    tail = " in the breast ultrasound image."
    tumour_type = attrs.get("tumor_type")
    if tumour_type == "normal" or attrs.get("count", 1) == 0:
        sentence = "No tumor" + tail
        return {"p0": "", **{f"p{i}": sentence for i in range(1, 7)}}
    counted = "tumors" if attrs.get("count", 1) > 1 else "tumor"  # with a number word only
    number, size = attrs.get("number"), size_phrase(attrs.get("size"))
    loc = location_phrase(attrs.get("location"))
    at = f"at the {loc}" if loc else None
    shaped = f"{attrs['shape']}-shaped" if attrs.get("shape") else None
    regular = {"benign": "regular", "malignant": "irregular"}.get(tumour_type)

    def variants(with_number, with_size, with_loc, with_shape):
        noun = counted if with_number else "tumor"
        first = _words(number if with_number else None, size if with_size else None,
                       shaped if with_shape else None, tumour_type, noun, at if with_loc else None)
        if with_shape:  # "... square-shaped regular tumors ..."
            second_mid = [shaped, regular, noun]
        else:  # "... regular-shaped tumors ..."
            second_mid = [f"{regular}-shaped" if regular else tumour_type, noun]
        second = _words(number if with_number else None, size if with_size else None,
                        *second_mid, at if with_loc else None)
        return [_capitalise(first) + tail, _capitalise(second) + tail]

    return {"p0": "", "p1": "Tumor" + tail,
            "p2": variants(False, False, False, False),
            "p3": variants(True, False, False, False),
            "p4": variants(True, True, False, False),
            "p5": variants(True, True, True, False),
            "p6": variants(True, True, True, True)}


def camus_prompts(attrs: dict) -> dict:
    """P0..P7 for CAMUS (Appendix G.2.2): two phrasings of each prompt."""
    name = attrs.get("class_name")
    if not name:
        raise ValueError("CAMUS attributes need 'class_name' (the structure, e.g. 'myocardium')")
    name = _capitalise(name)
    view, cycle, sex = attrs.get("view"), attrs.get("cycle"), attrs.get("sex")
    age, quality, shape = age_phrase(attrs.get("age")), attrs.get("image_quality"), attrs.get("shape")
    in_view = f" in {view} view" if view else ""
    at_cycle = f" at the {cycle} cycle" if cycle else ""
    person = _words(age, sex or ("patient" if age else None))
    of_person = f" of a {person}" if person else ""
    with_quality = f" with {quality} image quality" if quality else ""
    of_shape = f" of {shape} shape" if shape else ""

    def both(shape_part, view_part, rest):
        return [f"{name}{shape_part}{view_part} of the heart{rest}.",
                f"{name}{shape_part}{view_part} in the cardiac ultrasound{rest}."]

    p4_person = f" of a {sex}" if sex else ""
    return {"p0": "",
            "p1": both("", "", ""),
            "p2": both("", in_view, ""),
            "p3": both("", in_view, at_cycle),
            "p4": both("", in_view, at_cycle + p4_person),
            "p5": both("", in_view, at_cycle + of_person),
            "p6": both("", in_view, at_cycle + of_person + with_quality),
            "p7": both(of_shape, in_view, at_cycle + of_person + with_quality)}


def chexlocalize_prompts(attrs: dict) -> dict:
    """P0..P6 for CheXlocalize (Appendix G.2.1)."""
    name = attrs.get("class_name")
    if not name:
        raise ValueError("CheXlocalize attributes need 'class_name' (the pathology label)")
    view, shape = attrs.get("view"), attrs.get("shape")
    loc = location_phrase(attrs.get("location"))
    others = [p for p in _distinct(attrs.get("pathology")) if p != name]
    present = f" {', '.join(others)} are present." if others else ""
    in_view = f" in the {view} view of a Chest Xray." if view else " in a Chest Xray."
    of_view = f" of the {view} view of a Chest Xray." if view else " of a Chest Xray."
    of_shape = f" of shape {shape}" if shape else ""
    if loc:
        p4 = f"{name}{of_shape}{',' if shape else ''} and located in {loc}{of_view}"
    else:
        p4 = f"{name}{of_shape}{in_view}"
    return {"p0": "",
            "p1": f"{name} in a chest Xray.",
            "p2": f"{name}{in_view}",
            "p3": f"{name}{of_shape}{in_view}",
            "p4": p4,
            "p5": p4 + present,
            "p6": f"{name} in a Chest Xray.{present}"}


def build_prompts(dataset: str, attrs: dict) -> dict:
    """All prompts of one record from its attributes: ``{"p0": "", "p1": ..., ...}``."""
    family = family_of(dataset)
    if family == "non_radiology":
        return non_radiology_prompts(attrs, dataset)
    if family == "busi":
        return busi_prompts(attrs)
    if family == "camus":
        return camus_prompts(attrs)
    return chexlocalize_prompts(attrs)
