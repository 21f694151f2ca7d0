"""What truncation costs, in one line with the numbers and the setting to change."""

from edgelora.data.guards import describe_fit, truncation_problem


def _fit(n, longest, context, sets, auto=False):
    return {"max_seq_length": n, "auto": auto, "longest": longest, "context": context,
            "sets": {name: dict(zip(("examples", "truncated", "without_trained_tokens"), c)) for name, c in sets.items()}}


def test_five_percent_truncated_is_fine_more_is_not():
    assert truncation_problem(_fit(64, 80, 512, {"train": (95, 4, 0), "heldout": (5, 1, 0)}), False) is None
    assert truncation_problem(_fit(64, 80, 512, {"train": (95, 5, 0), "heldout": (5, 1, 0)}), False) == (
        "data: 6 of 100 examples (6%) are longer than max_seq_length=64 and would be truncated; raise [data] "
        "max_seq_length (longest example: 80 tokens), or set [data] allow_truncation = true")


def test_one_example_without_answer_tokens_stops_unless_allowed():
    fit = _fit(64, 80, 512, {"train": (100, 1, 1), "heldout": (0, 0, 0)})
    assert truncation_problem(fit, False).startswith("data: 1 of 100 examples (1%) are longer than "
                                                     "max_seq_length=64 and would be truncated; 1 would lose every "
                                                     "assistant token and be skipped; raise")
    assert truncation_problem(fit, True) is None


def test_examples_longer_than_the_context_say_so():
    fit = _fit(512, 900, 512, {"train": (10, 2, 0)}, auto=True)
    assert truncation_problem(fit, False).endswith(
        "shorten the examples longer than the model's context (512 tokens), or set [data] allow_truncation = true")
    assert describe_fit(fit) == ("512 tokens (auto: longest example 900 rounded up to a multiple of 64, capped by "
                                 "the model's context 512; set [data] max_seq_length to choose)")
