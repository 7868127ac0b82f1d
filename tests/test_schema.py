"""The study file's reference is generated from the schema: complete, and as committed."""

from pathlib import Path

from raymem.schema import all_rows, reference

REPO = Path(__file__).resolve().parent.parent


def test_every_key_has_a_description():
    missing = [key for key, _, _, meaning in all_rows() if not meaning.strip()]
    assert missing == []


def test_the_reference_covers_every_section():
    keys = {key for key, *_ in all_rows()}
    for key in ("study", "finetune.checkpoint_every", "localise.control.auxiliary_task",
                "precog.actors.precision", "tasks[].text_fields", "subsample_strategy",
                "search.space.lr", "search.resources.gpus"):
        assert key in keys
    rows = {key: (kind, default) for key, kind, default, _ in all_rows()}
    assert rows["finetune.resources.device"] == ("one of auto, cpu, cuda", "`auto`")
    assert rows["noise_ratio"] == ("float (>= 0, < 1)", "`0.15`")
    assert rows["tasks"][0].startswith("list of registry name or user task (see tasks[])")


def test_committed_reference_is_the_generated_one():
    # regenerate with: raymem schema > docs/study-reference.md
    assert (REPO / "docs" / "study-reference.md").read_text() == reference()
