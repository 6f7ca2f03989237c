import pytest

from depthcut.eval.generation import generate_samples, is_looping, repeated_ngram_share
from tiny import tiny_llama, tiny_tokenizer


def test_repetition_share_counts_repeated_ngrams():
    assert repeated_ngram_share("a b c d e f g h") == 0.0
    # 8 words → 5 four-grams; "a b c d" repeats once
    assert repeated_ngram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_share("the the the the the the") == pytest.approx(2 / 3)
    assert repeated_ngram_share("too short") == 0.0


def test_loop_detector_flags_loops_and_passes_prose():
    loop = "The city was founded in 1820. " + "It is a city in the north. " * 6
    prose = (
        "The river rises in the hills east of the town, turns south past the old mill, and "
        "joins the sea near a fishing village whose harbour was rebuilt after the storm."
    )
    assert is_looping(loop) and repeated_ngram_share(loop) > 0.6
    assert not is_looping(prose) and repeated_ngram_share(prose) == 0.0


def test_generate_samples_are_greedy_and_scored():
    model, tok = tiny_llama(layers=2), tiny_tokenizer()
    samples = generate_samples(model, tok, prompts=("w5 w6 w7",), new_tokens=12)
    again = generate_samples(model, tok, prompts=("w5 w6 w7",), new_tokens=12)
    assert samples == again and len(samples[0].continuation.split()) == 12
    assert samples[0].repeated_4gram_share == repeated_ngram_share(samples[0].continuation)
    assert samples[0].looping == is_looping(samples[0].continuation)
