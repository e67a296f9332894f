"""A caption's entities and subject–verb–object relations, offline: ComCLIP's text side.

The paper asks GPT-3.5 for ``{"objects": {name: {"attributes": ...}}, "connections": [{"subject",
"verb", "object"}]}``. Here the same shape comes from TextBlob's bundled
Pattern tagger (a lexicon + rules that ship inside the ``textblob`` wheel: nothing is downloaded)
and a few chunk rules:

- a noun phrase is determiners/numbers, modifiers (adjectives, participles, numbers) and a run of
  nouns; the entity is the noun run ("tennis racket"), its attributes the modifiers ("two", "brown");
- a verb group skips auxiliaries ("is", "has been"); its last verb is the predicate; "be + participle
  + by NP" is a passive (subject and object swap);
- a preposition between two noun phrases with no verb ("a cup next to a plate") is the predicate;
  multi-word prepositions ("next to", "in front of") are one token;
- subjects joined by "and" each get the relation.
Captions in ComCLIP's own JSON shape (from an LLM) load with :func:`from_json`. Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

AUX = {"is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re", "has", "have", "had", "do", "does",
       "did", "will", "would", "can", "could", "may", "might", "shall", "should", "must", "get", "gets", "got"}
BE = {"is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re"}
MULTI_PREPS = (("in", "front", "of"), ("on", "top", "of"), ("in", "the", "middle", "of"), ("next", "to"),
               ("close", "to"), ("away", "from"), ("out", "of"), ("inside", "of"), ("on", "the", "side", "of"),
               ("in", "between"), ("on", "to"), ("up", "to"), ("far", "from"), ("across", "from"))
NOUN = ("NN", "NNS", "NNP", "NNPS")
MODIFIER = ("JJ", "JJR", "JJS", "CD", "VBN", "VBG")
ARTICLES = {"a", "an", "the", "some", "this", "that", "these", "those", "his", "her", "its", "their", "my",
            "our", "your"}


@dataclass(frozen=True)
class Entity:
    name: str
    attributes: tuple = ()

    @property
    def text(self) -> str:
        """The text scored against the entity's sub-image (ComCLIP: attributes then the name)."""
        return " ".join((*self.attributes, self.name))


@dataclass(frozen=True)
class Relation:
    subject: Optional[str]
    verb: Optional[str]
    object: Optional[str]


@dataclass(frozen=True)
class Parse:
    entities: tuple = ()
    relations: tuple = ()

    def to_json(self) -> dict:
        """ComCLIP's JSON shape."""
        return {"objects": {e.name: {"attributes": list(e.attributes) or None} for e in self.entities},
                "connections": [{"subject": r.subject, "verb": r.verb, "object": r.object} for r in self.relations]}


def from_json(obj) -> Parse:
    """A :class:`Parse` from ComCLIP's JSON shape (attributes a string, a list or null; connections
    with any of subject/verb/object missing). ValueError (one line) for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("objects", {}), dict):
        raise ValueError('a parse is {"objects": {name: {"attributes": ...}}, "connections": [...]}')
    entities = []
    for name, info in obj.get("objects", {}).items():
        attrs = (info or {}).get("attributes") if isinstance(info, (dict, type(None))) else None
        attrs = [attrs] if isinstance(attrs, str) else attrs or []
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            raise ValueError(f"the attributes of {name!r} must be a string, a list of strings or null")
        entities.append(Entity(str(name), tuple(a for a in attrs if a)))
    conns = obj.get("connections") or []
    if not isinstance(conns, list) or not all(isinstance(c, dict) for c in conns):
        raise ValueError('"connections" must be a list of {"subject", "verb", "object"} objects')
    rels = tuple(Relation(*(c.get(k) if isinstance(c.get(k), str) else None for k in ("subject", "verb", "object")))
                 for c in conns)
    return Parse(tuple(entities), rels)


@lru_cache(maxsize=1)
def _tagger():
    try:
        from textblob.en.taggers import PatternTagger
    except ImportError as e:  # the extra is missing
        raise ImportError("ComCLIP's caption parser needs textblob: pip install 'retrieval[comclip]' "
                          "(or pass parses in ComCLIP's JSON shape)") from e
    return PatternTagger()


def tag(sentence: str) -> list[tuple[str, str]]:
    """(word, Penn tag) pairs, lower-cased, multi-word prepositions joined, a few tagger slips fixed."""
    words = [(w.lower(), t) for w, t in _tagger().tag(sentence) if t not in (".", ",", ":", "``", "''")]
    out, i = [], 0
    while i < len(words):
        multi = next((m for m in MULTI_PREPS if tuple(w for w, _ in words[i:i + len(m)]) == m), None)
        if multi:
            out.append((" ".join(multi), "IN"))
            i += len(multi)
        else:
            out.append(words[i])
            i += 1
    return _fix(out)


def _fix(tags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Context rules for the tagger's usual slips on short captions."""
    tags = list(tags)
    for i, (w, t) in enumerate(tags):
        prev = tags[i - 1] if i else ("", "")
        nxt = tags[i + 1] if i + 1 < len(tags) else ("", "")
        if t in ("VB", "VBP", "VBZ", "VBD") and w not in AUX and (prev[1] in ("DT", "PRP$") or prev[0] in ARTICLES):
            tags[i] = (w, "NN")                       # "a bear is ...": a noun after an article
        elif t in NOUN and prev[0] in BE and (nxt[1] in NOUN or nxt[1] in ("DT", "PRP$", "JJ", "IN", "TO", "")):
            tags[i] = (w, "VBG")                      # "is brushin hair": a verb after "is"
    if not any(t.startswith("VB") and w not in AUX for w, t in tags):
        for i in range(1, len(tags) - 1):             # "the player hits the ball": a plural noun as verb
            if tags[i][1] == "NNS" and tags[i - 1][1] in NOUN and tags[i + 1][1] in ("DT", "PRP$", "CD"):
                tags[i] = (tags[i][0], "VBZ")
                break
    return tags


def _noun_phrase(tags, i):
    """(Entity, next index) of a noun phrase starting at ``i``, or (None, i)."""
    j = i
    while j < len(tags) and (tags[j][1] in ("DT", "PDT", "PRP$") or tags[j][0] in ARTICLES):
        j += 1
    attrs = []
    while j < len(tags) and tags[j][1] in MODIFIER and j + 1 < len(tags) and \
            (tags[j + 1][1] in NOUN or tags[j + 1][1] in MODIFIER) and (j > i or tags[j][1][:2] != "VB"):
        attrs.append(tags[j][0])
        j += 1
    nouns = []
    while j < len(tags) and tags[j][1] in NOUN:
        nouns.append(tags[j][0])
        j += 1
    if not nouns:
        if j < len(tags) and tags[j][1] == "PRP":
            return Entity(tags[j][0]), j + 1
        return None, i
    return Entity(" ".join(nouns), tuple(attrs)), j


def parse(sentence: str) -> Parse:
    """Entities and relations of ``sentence`` (see the module docstring); an empty Parse for text with
    no noun."""
    tags = tag(sentence)
    entities: dict[str, Entity] = {}
    units = []                                        # ("np", name) | ("verb", word, passive) | ("prep", word) | ("and",)
    i, group = 0, []
    while i < len(tags):
        ent, j = _noun_phrase(tags, i)
        if ent is not None:
            entities.setdefault(ent.name, ent)
            units.append(("np", ent.name))
            i = j
            continue
        w, t = tags[i]
        if t.startswith("VB") or t == "MD" or (t == "RB" and group):
            group.append((w, t))
            if i + 1 < len(tags) and (tags[i + 1][1].startswith("VB") or tags[i + 1][1] in ("MD", "RB")):
                i += 1
                continue
            main = [x for x in group if x[1].startswith("VB") and x[0] not in AUX]
            if main:
                passive = any(x[0] in BE for x in group) and main[-1][1] in ("VBN", "VBD")
                units.append(("verb", main[-1][0], passive))
            group = []
        elif t in ("IN", "TO"):
            units.append(("prep", w))
        elif t == "CC" and w in ("and", "&"):
            units.append(("and",))
        i += 1
    return Parse(tuple(entities.values()), tuple(_relations(units)))


def _relations(units) -> list[Relation]:
    rels, subjects, k = [], [], 0
    while k < len(units):
        u = units[k]
        if u[0] == "np":
            if not (k and units[k - 1][0] == "and"):
                subjects = []
            subjects.append(u[1])
        elif u[0] == "verb" and subjects:
            obj, m = _next_np(units, k + 1)
            by = k + 1 < len(units) and units[k + 1] == ("prep", "by")
            for s in subjects:
                rels.append(Relation(obj, u[1], s) if u[2] and by else Relation(s, u[1], obj))
            if obj is not None:
                subjects, k = [obj], m
                continue
        elif u[0] == "prep" and subjects and k and units[k - 1][0] == "np":
            obj, m = _next_np(units, k + 1, direct=True)
            if obj is not None:
                rels += [Relation(s, u[1], obj) for s in subjects[-1:]]
                subjects, k = [obj], m
                continue
        k += 1
    return rels


def _next_np(units, k, direct=False):
    """(name, index after it) of the noun phrase after a verb (through one preposition), else (None, k)."""
    if k < len(units) and units[k][0] == "prep" and not direct:
        k += 1
    if k < len(units) and units[k][0] == "np":
        return units[k][1], k + 1
    return None, k
