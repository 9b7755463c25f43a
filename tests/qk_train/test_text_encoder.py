from qk_train.config import load_preset
from qk_train.models.text_encoder import PretrainedTextEncoder


def test_pretrained_encoder_loads_without_a_progress_bar(capsys):
    # transformers draws a "Loading weights" bar by default; qk-export --quiet and the one-line
    # outputs of qk-train and qk-eval must not get it
    from transformers.utils import logging as hf_logging

    encoder = PretrainedTextEncoder(load_preset("small").text)
    out, err = capsys.readouterr()
    assert encoder.width == 384
    assert "Loading weights" not in out + err, err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is put back
