"""Texts of the synthetic world, kept apart on purpose.

* ``make_captions``: per-object sentences built from the object's actual sub-type and attributes (colour, parts,
  size). They exist ONLY to fine-tune / train the teacher; the student never sees them.
* ``make_landmarks``: per-category descriptive phrases for (I2L)^2, from a *different* grammar and word list (use,
  style, shape; no colours, no per-object attributes), standing in for the paper's LLM-generated landmarks.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_CAPTION_TEMPLATES = (
    "a {color} {noun}",
    "a {color} {noun} with {feats}",
    "a {size} {color} {noun}",
    "a 3d model of a {color} {noun} with {feat1}",
    "this {category} is a {color} {noun} that has {feats}",
    "a {size} {noun} in {color}, with {feat1}",
    "{A_noun} with {feats}, colored {color}",
    "a rendering of a {color} {category}: a {subtype} one with {feat1}",
)

# World v3 (``colours="per_image"``): every image draws its colours afresh, so a caption that named the object's
# colour would be wrong for most of its images. Same count and order as above, so the object's RNG picks the same
# template positions.
_SHAPE_ONLY_TEMPLATES = (
    "a {noun}",
    "a {noun} with {feats}",
    "a {size} {noun}",
    "a 3d model of a {noun} with {feat1}",
    "this {category} is a {noun} that has {feats}",
    "a {size} {noun}, with {feat1}",
    "{A_noun} with {feats}",
    "a rendering of a {category}: a {subtype} one with {feat1}",
)
assert len(_SHAPE_ONLY_TEMPLATES) == len(_CAPTION_TEMPLATES)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "no extra parts"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def make_captions(category: str, subtype: str, noun: str, attrs: dict, rng: np.random.Generator, n: int = 4,
                  *, colour: bool = True) -> list[str]:
    """``n`` distinct templated captions for one object (templates chosen with the object's own RNG); with
    ``colour=False`` they describe the shape only (no colour word)."""
    feats = list(attrs.get("features", []))
    fields = {
        "color": attrs.get("color", "plain"), "noun": noun, "category": category, "subtype": subtype,
        "size": attrs.get("size", "regular"), "feats": _join(feats), "feat1": feats[0] if feats else "a simple shape",
        "A_noun": f"{_article(noun)} {noun}",
    }
    templates = _CAPTION_TEMPLATES if colour else _SHAPE_ONLY_TEMPLATES
    order = rng.permutation(len(templates))[:n]
    return [templates[i].format(**fields) for i in sorted(order)]


# --------------------------------------------------------------------------------------------- landmarks

_STYLES = ("minimalist", "antique", "modern", "rustic", "industrial", "vintage", "futuristic", "handmade",
           "Scandinavian", "mass-produced")

# category -> (nouns, uses, shapes); phrases written as "<noun> <use>" and "<noun> <shape>"
_LANDMARK_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "chair": (("chair", "seat", "piece of seating"),
              ("for a kitchen table", "used at an office desk", "found in a living room", "for a bar counter",
               "meant for one person"),
              ("that has a rounded backrest", "standing on slender supports", "whose back leans slightly",
               "that is tall and narrow", "that is low and deep")),
    "table": (("table", "tabletop furniture", "work surface"),
              ("for family dinners", "placed in front of a couch", "for writing and studying", "used in a cafe",
               "for a dining room"),
              ("whose top is perfectly flat", "that stands on a single column", "held up by heavy supports",
               "that sits low to the ground", "with a broad surface")),
    "sofa": (("sofa", "couch", "settee"),
             ("for a family living room", "where people watch television", "for a hotel lobby",
              "to nap on in the afternoon", "placed against a wall"),
             ("that is long and upholstered", "whose cushions look soft", "shaped like a corner unit",
              "that looks deep and low", "that seats several people")),
    "bed": (("bed", "place to sleep", "bedframe"),
            ("for a child's bedroom", "in a guest room", "for a hotel room", "shared by two siblings",
             "for a dormitory"),
            ("that is flat and rectangular", "stacked one level above another", "with a padded end panel",
             "that is wide enough for two", "raised on a sturdy frame")),
    "lamp": (("lamp", "light fixture", "lighting device"),
             ("for reading at night", "hung over a dining table", "lighting a desk", "standing next to an armchair",
              "for a bedside"),
             ("that ends in a shade", "on a long thin stem", "that bends at a joint", "hanging from the ceiling",
              "that throws light downwards")),
    "bottle": (("bottle", "container for liquids", "flask"),
               ("for red wine", "to carry drinking water", "for olive oil", "kept in a refrigerator",
                "for a picnic"),
               ("that narrows into a neck", "that is tall and slim", "that is sealed at the top",
                "whose body is round and wide", "that can be poured from")),
    "mug": (("mug", "cup", "drinking vessel"),
            ("for morning coffee", "for hot tea", "used in an office kitchen", "for hot chocolate",
             "served at a cafe"),
            ("that is open at the top", "that is short and sturdy", "that widens towards the rim",
             "that fits in one hand", "with thick ceramic walls")),
    "bowl": (("bowl", "dish", "basin-shaped vessel"),
             ("for breakfast cereal", "to serve salad", "holding soup", "for fruit on a counter", "used for mixing"),
             ("that is round and open", "with curved sides", "that is wide and shallow", "that is deep and round",
              "resting on a small base")),
    "vase": (("vase", "flower vessel", "decorative jar"),
             ("for fresh flowers", "on a mantelpiece", "displayed in a museum", "for a table centerpiece",
              "for dried branches"),
             ("that swells in the middle", "with a narrow opening", "that is tall and elegant",
              "that is made of glazed ceramic", "whose profile curves gracefully")),
    "airplane": (("airplane", "aircraft", "flying machine"),
                 ("for passenger flights", "for air combat", "used at an airshow", "for long-haul travel",
                  "for a flight school"),
                 ("with long wings spread wide", "that has a pointed nose", "with a vertical tail",
                  "that is streamlined", "built for speed")),
    "car": (("car", "automobile", "road vehicle"),
            ("for a daily commute", "for family road trips", "for hauling cargo", "parked on a city street",
             "for a taxi service"),
            ("that sits on rubber tires", "with a glass windshield", "that is low and aerodynamic",
             "that is boxy and practical", "with doors on each side")),
    "bench": (("bench", "long seat", "outdoor seat"),
              ("in a city park", "at a bus stop", "for a garden", "in a locker room", "for an outdoor meal"),
              ("that is long and narrow", "made of planks", "that seats several people in a row",
               "that is sturdy and heavy", "without any cushions")),
    "bookshelf": (("bookshelf", "bookcase", "shelving unit"),
                  ("for a home library", "in a study room", "to display ornaments", "in a classroom",
                   "for storing magazines"),
                  ("that is tall and upright", "divided into compartments", "that leans against a wall",
                   "with evenly spaced levels", "that is open at the front")),
    "cabinet": (("cabinet", "cupboard", "storage unit"),
                ("for storing clothes", "in a kitchen", "for a bathroom", "to keep files in an office",
                 "in a hallway"),
                ("that is a closed box", "with hinged fronts", "that is taller than a person",
                 "with pull-out compartments", "that is solid and rectangular")),
    "monitor": (("monitor", "display", "screen"),
                ("for a computer workstation", "for watching films", "used for gaming", "in a control room",
                 "for a living room"),
                ("that is thin and flat", "with a dark glass surface", "that is wide and rectangular",
                 "that is bulky at the back", "that stands upright")),
    "guitar": (("guitar", "string instrument", "musical instrument"),
               ("for a rock concert", "played around a campfire", "for a jazz band", "for music lessons",
                "used in a recording studio"),
               ("with a long fretted neck", "whose body has curved sides", "that is plucked with fingers",
                "with tuning pegs at the end", "shaped like a figure eight")),
    "rocket": (("rocket", "launch vehicle", "spacecraft"),
               ("for reaching orbit", "for a space mission", "launched from a pad", "carrying a satellite",
                "for a science fair"),
               ("that is tall and cylindrical", "that tapers to a point", "standing upright",
                "with engines at the bottom", "that is long and slender")),
    "tower": (("tower", "tall building", "structure"),
              ("in an old castle", "for telecommunications", "in a city skyline", "used as a lookout",
               "for a church"),
              ("that rises high above the ground", "that narrows towards the top", "built of stone",
               "with small windows", "that is much taller than it is wide")),
    "mushroom": (("mushroom", "fungus", "toadstool"),
                 ("found in a forest", "growing on a log", "picked for cooking", "from a fairy tale",
                  "growing after rain"),
                 ("with a cap on a stalk", "that is small and soft", "shaped like a little umbrella",
                  "that grows from the ground", "with gills under the cap")),
    "umbrella": (("umbrella", "parasol", "canopy"),
                 ("for a rainy day", "at a beach", "for a cafe terrace", "carried in a bag",
                  "shading a garden table"),
                 ("held up by a central shaft", "that can be opened and closed", "made of waterproof fabric",
                  "shaped like a dome", "that is long and thin when closed")),
    "ladder": (("ladder", "climbing frame", "set of steps"),
               ("for painting a ceiling", "to reach a high shelf", "for picking fruit", "used by a builder",
                "for cleaning gutters"),
               ("with evenly spaced steps", "that is tall and narrow", "made of two rails",
                "that folds for storage", "that stands on its own")),
    "bathtub": (("bathtub", "bath", "tub"),
                ("for a relaxing soak", "in a hotel bathroom", "for bathing a child", "in a spa",
                 "in a small apartment"),
                ("that is long and deep", "that holds water", "with smooth curved walls",
                 "that is made of enamel", "big enough to lie down in")),
    "toilet": (("toilet", "lavatory", "water closet"),
               ("in a public restroom", "for a family bathroom", "in an old house", "for a modern apartment",
                "on a train"),
               ("that is made of porcelain", "with a hinged seat", "that flushes with water",
                "with an oval opening", "attached to the plumbing")),
    "piano": (("piano", "keyboard instrument", "musical keyboard"),
              ("for a concert hall", "for practicing scales", "in a music school", "for a jazz bar",
               "played at a wedding"),
              ("with black and white keys", "that is large and heavy", "with a row of keys in front",
               "that makes sound with hammers", "that is polished and glossy")),
}


def make_landmarks(category: str, n_max: int = 40) -> list[str]:
    """Deterministic list of >= 32 landmark phrases for ``category`` (order fixed by a content hash)."""
    nouns, uses, shapes = _LANDMARK_WORDS[category]
    phrases = set()
    for noun in nouns:
        for tail in uses + shapes:
            phrases.add(f"{_article(noun)} {noun} {tail}")
    for style in _STYLES:
        phrases.add(f"{_article(style)} {style} {nouns[0]}")
    ordered = sorted(phrases, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return ordered[:n_max]
