"""Held-out paraphrases: never a training string, same meaning as the templated instruction."""
import re
import string
from dataclasses import replace

import pytest

from qk_train.data.shapeworld import DIRECTIONS, EDIT_KINDS, POSITIONS, SIZES, TEMPLATES, make_edit, position_name
from qk_train.eval.paraphrases import AREA, FURTHER, KIND_OF, PARAPHRASES, TOWARD, WHERE, edit_meaning, paraphrase


def training_strings(sample) -> set[str]:
    """Every string the training templates can produce for this sample's objects (any
    position, direction, size or sub-kind, not only the sample's own)."""
    objs = [o for o in (sample.old_obj, sample.target_obj) if o is not None]
    out = set()
    for o in objs:
        for sub, templates in TEMPLATES.items():
            for t in templates:
                for c2 in {x.colour for x in objs}:
                    for position in POSITIONS:
                        for direction in DIRECTIONS:
                            for size in SIZES:
                                out.add(t.format(c=o.colour, s=o.shape, c2=c2, position=position,
                                                 direction=direction, size=size))
    return out


def test_every_kind_has_at_least_8_templates_and_40_in_all():
    per_kind = {k: sum(len(PARAPHRASES[sub]) for sub in PARAPHRASES if KIND_OF[sub] == k) for k in EDIT_KINDS}
    assert all(n >= 8 for n in per_kind.values()), per_kind
    assert sum(per_kind.values()) >= 40
    assert set(PARAPHRASES) == set(TEMPLATES) == set(KIND_OF)
    assert set(WHERE) == set(AREA) == set(POSITIONS) and set(TOWARD) == set(FURTHER) == set(DIRECTIONS)
    for templates in PARAPHRASES.values():
        assert len(set(templates)) == len(templates)
        for t in templates:
            assert {"c", "s"} <= {f for _, f, _, _ in string.Formatter().parse(t) if f}


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_no_paraphrase_is_a_training_string(kind):
    for i in range(30):
        s = make_edit("test", i, 64, kind)
        sub, fields = edit_meaning(s)
        forbidden = training_strings(s)
        assert s.instruction in forbidden  # the helper does produce the training strings
        for t in PARAPHRASES[sub]:  # every template of the sub-kind, not only the one drawn
            text = t.format(**fields)
            assert text not in forbidden, (s.instruction, text)
            assert text != s.instruction


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_paraphrases_carry_the_meaning_of_the_templated_instruction(kind):
    for i in range(40):
        s = make_edit("val", i, 64, kind)
        text = paraphrase(s, i)
        sub, _ = edit_meaning(s)
        assert KIND_OF[sub] == kind
        obj = s.old_obj if s.old_obj is not None else s.target_obj
        assert f"{obj.colour} {obj.shape}" in text, (s.instruction, text)
        if kind == "colour":
            assert re.search(rf"\b{s.target_obj.colour}\b", text), (s.instruction, text)
        if kind == "insert" or sub == "move_to":
            position = position_name(s.target_obj.cx, s.target_obj.cy, 64)
            assert f"at the {position}" in s.instruction or f"to the {position}" in s.instruction
            assert WHERE[position] in text or AREA[position] in text, (s.instruction, text)
        if kind == "insert":  # a size, where one is named, is the new object's
            assert {w for w in SIZES if re.search(rf"\b{w}\b", text)} <= {s.target_obj.size}, (s.instruction, text)
        if sub == "move_dir":
            direction = s.instruction.split()[-1]
            assert TOWARD[direction] in text or FURTHER[direction] in text, (s.instruction, text)
        if kind == "resize":
            assert sub == s.instruction.split()[-1]  # "bigger" / "smaller", read from the radii


def test_paraphrase_is_deterministic_and_uses_many_templates():
    samples = [(i, make_edit("test", i, 64, EDIT_KINDS[i % 5])) for i in range(60)]
    first = [paraphrase(s, i) for i, s in samples]
    assert first == [paraphrase(s, i) for i, s in samples]
    used = {t for i, s in samples for t in PARAPHRASES[edit_meaning(s)[0]] if t.format(**edit_meaning(s)[1]) == paraphrase(s, i)}
    assert len(used) >= 25  # the draw is not stuck on a few templates by the kind cycle of indices


def test_move_reads_position_or_direction_from_the_instruction():
    seen = set()
    for i in range(30):
        s = make_edit("val", i, 64, "move")
        sub, _ = edit_meaning(s)
        seen.add(sub)
        assert (sub == "move_to") == (" to the " in s.instruction)
    assert seen == {"move_to", "move_dir"}
    s = make_edit("val", 0, 64, "move")
    with pytest.raises(ValueError, match="names neither"):
        edit_meaning(replace(s, instruction="move it somewhere"))
    with pytest.raises(ValueError, match="index"):
        paraphrase(s, -1)
