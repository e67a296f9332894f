"""ComCLIP's text side, offline: the built-in parser gives the expected entities and subject–verb–object
triples on captions picked for attributes, passives, multi-word prepositions, plural and joined
subjects, tagger slips; a caption with no verb or object falls back cleanly; ComCLIP's JSON shape
round-trips and bad shapes are refused in one line."""
import pytest

pytest.importorskip("textblob")

from retrieval.methods.parse import Entity, Parse, Relation, from_json, parse  # noqa: E402

CASES = [
    ("a man is sitting at a table", [("man", "sitting", "table")], {"man": (), "table": ()}),
    ("a young person sits on a boat", [("person", "sits", "boat")], {"person": ("young",), "boat": ()}),
    ("two brown dogs chasing a red ball", [("dogs", "chasing", "ball")], {"dogs": ("two", "brown"), "ball": ("red",)}),
    ("a dog is chased by a young man", [("man", "chased", "dog")], {"dog": (), "man": ("young",)}),
    ("the ball was kicked by the boy", [("boy", "kicked", "ball")], {"ball": (), "boy": ()}),
    ("a cup next to a plate", [("cup", "next to", "plate")], {"cup": (), "plate": ()}),
    ("a cat in front of a television", [("cat", "in front of", "television")], {"cat": (), "television": ()}),
    ("a man and a woman holding a dog", [("man", "holding", "dog"), ("woman", "holding", "dog")],
     {"man": (), "woman": (), "dog": ()}),
    ("people riding horses on the beach", [("people", "riding", "horses"), ("horses", "on", "beach")],
     {"people": (), "horses": (), "beach": ()}),
    ("the tennis player hits the ball", [("tennis player", "hits", "ball")], {"tennis player": (), "ball": ()}),
    ("a bear is climbs a tree.", [("bear", "climbs", "tree")], {"bear": (), "tree": ()}),           # "bear" tagged VB
    ("a man is skiing in the snow.", [("man", "skiing", "snow")], {"man": (), "snow": ()}),        # "skiing" tagged NN
    ("a dog that is chasing a cat", [("dog", "chasing", "cat")], {"dog": (), "cat": ()}),
    ("the man has been holding a small black umbrella", [("man", "holding", "umbrella")],
     {"man": (), "umbrella": ("small", "black")}),
]


@pytest.mark.parametrize("caption,triples,entities", CASES, ids=[c[0] for c in CASES])
def test_the_parser_finds_the_triples(caption, triples, entities):
    p = parse(caption)
    assert [(r.subject, r.verb, r.object) for r in p.relations] == triples
    assert {e.name: e.attributes for e in p.entities} == entities


def test_entity_text_is_attributes_then_name():
    assert Entity("person", ("young",)).text == "young person"
    assert [e.text for e in parse("two brown dogs chasing a red ball").entities] == ["two brown dogs", "red ball"]


@pytest.mark.parametrize("caption,relations", [
    ("a laptop", ()),                                          # no verb, no object
    ("a cat sleeping", (Relation("cat", "sleeping", None),)),  # no object
    ("running quickly", ()),                                   # no noun at all
    ("", ()),
])
def test_captions_without_a_relation_fall_back_cleanly(caption, relations):
    assert parse(caption).relations == relations


def test_comclip_json_shape_round_trips_and_bad_shapes_are_refused():
    raw = {"objects": {"person": {"attributes": "young"}, "boat": {"attributes": None}, "hat": {"attributes": ["red"]}},
           "connections": [{"subject": "person", "verb": "sit", "object": "boat"}, {"verb": "wear"}]}
    p = from_json(raw)
    assert p == Parse((Entity("person", ("young",)), Entity("boat"), Entity("hat", ("red",))),
                      (Relation("person", "sit", "boat"), Relation(None, "wear", None)))
    assert from_json(p.to_json()) == p
    for bad in ([1], {"objects": [1]}, {"objects": {"a": {"attributes": 3}}}, {"connections": "x"},
                {"objects": {}, "connections": [1]}):
        with pytest.raises(ValueError):
            from_json(bad)
