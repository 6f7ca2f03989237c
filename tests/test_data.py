import pytest
import torch

from depthcut import data
from depthcut.errors import CalibrationError
from depthcut.eval.perplexity import windows
from tiny import tiny_tokenizer, words


def test_calibration_and_evaluation_never_overlap(tmp_path):
    text = "\n\n".join(f"article{i} " + words(20, seed=i) for i in range(10))
    path = tmp_path / "t.txt"
    path.write_text(text)
    calib = data.text_split(str(path), "calibration").split("\n\n")
    held = data.text_split(str(path), "evaluation").split("\n\n")
    assert len(calib) == 8 and len(held) == 2
    assert not set(calib) & set(held)


def test_a_source_of_one_page_per_line_splits_by_line(tmp_path):
    """The packaged c4 text has no blank line: its pages are its lines, 80% of them fit."""
    path = tmp_path / "c4.txt"
    path.write_text("\n".join(f"page{i} " + words(8, seed=i) for i in range(10)) + "\n")
    calib = data.split_source(str(path), "calibration")
    assert [c.split()[0] for c in calib] == [f"page{i}" for i in range(8)]
    assert [h.split()[0] for h in data.split_source(str(path), "evaluation")] == ["page8", "page9"]
    paragraphs = data.split_articles("a b\nc\n\nd\ne")  # blank lines still split first
    assert paragraphs == ["a b\nc", "d\ne"]


def test_copying_windows_repeat_the_first_half_of_each_window_s_real_tokens():
    ids = torch.tensor([[5, 1, 2, 3, 4, 6, 7], [9, 8, 7, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]])
    copies = data.copying_windows(data.CalibData(ids, mask, batch_size=2))
    assert copies.input_ids.tolist() == [[5, 1, 2, 3, 1, 2, 3], [9, 8, 8, 0, 0, 0, 0]]
    assert copies.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    both = data.with_copies(data.CalibData(ids, mask, batch_size=2))
    assert both.input_ids.tolist() == ids.tolist() + copies.input_ids.tolist()
    assert both.batch_size == 2


def test_from_texts_pads_and_masks():
    tok = tiny_tokenizer()
    calib = data.from_texts(tok, ["w3 w4 w5", "w6"], seq_len=8)
    assert calib.input_ids.shape == (2, 3)
    assert calib.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_empty_calibration_is_refused():
    with pytest.raises(CalibrationError, match="empty"):
        data.from_texts(tiny_tokenizer(), ["  ", ""], seq_len=8)
    with pytest.raises(CalibrationError, match="fewer than 16"):
        data.pack_tokens([1, 2, 3], 4, 16, 2)


def test_perplexity_windows_score_each_token_once():
    spans = windows(100, 32, 16)
    assert sum(n for _, _, n in spans) == 99
    assert spans[0] == (0, 32, 31) and spans[1] == (16, 48, 16)
    assert windows(64, 32, 32) == [(0, 32, 31), (32, 64, 32)]


def test_bos_windows_start_with_bos_and_keep_the_length():
    ids = list(range(10, 40))
    plain = data.pack_tokens(ids, 3, 8, 2)
    with_bos = data.pack_tokens(ids, 3, 8, 2, bos_id=1)
    assert plain.input_ids.tolist()[0] == list(range(10, 18))
    assert with_bos.input_ids.shape == (3, 8)
    assert with_bos.input_ids[:, 0].tolist() == [1, 1, 1]
    assert with_bos.input_ids[:, 1:].flatten().tolist() == list(range(10, 31))


def _bos_first_tokenizer():
    """The tiny tokenizer with a post-processor that puts <s> first, as Gemma's does."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


def test_bos_follows_what_the_tokenizer_puts_first(tmp_path):
    from depthcut.data import expects_bos
    from depthcut.eval.run import EvalSettings
    from depthcut.jobs import CalibSpec

    plain, bos_first = tiny_tokenizer(), _bos_first_tokenizer()
    assert not expects_bos(plain) and expects_bos(bos_first)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(words(300, seed=s) for s in range(6)))
    first = CalibSpec(str(text), 4, 16, 2).data(bos_first).input_ids[:, 0]
    assert first.tolist() == [bos_first.bos_token_id] * 4
    assert CalibSpec(str(text), 4, 16, 2).data(plain).input_ids[0, 0] != plain.bos_token_id
    assert EvalSettings().bos_id(bos_first) == bos_first.bos_token_id
    assert EvalSettings().bos_id(plain) is None and EvalSettings(bos=True).bos_id(plain) == 1
    assert EvalSettings(bos=False).bos_id(bos_first) is None
