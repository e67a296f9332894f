import json

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ModelLoadError
from retrieval.embed import load_model, same_model

from tests.conftest import FLICKR, TINY, first_captions, needs_shared


@needs_shared
def test_fixture_loads_offline_with_identity(tiny_clip):
    ident = tiny_clip.identity
    assert ident["embed_dim"] == 256 and tiny_clip.dim == 256
    assert 10 < tiny_clip.logit_scale < 20  # read from the model (about 15), not assumed to be 100
    assert ident["context_length"] == 32 and ident["image_size"] == [64, 64]
    assert ident["weights_sha256"].startswith("9dce3be6") and ident["weights_sha256"].endswith("fe8f7ca1")
    assert tiny_clip.device == "cpu"


@needs_shared
def test_right_caption_wins_on_five_flickr_photos(tiny_clip):

    import torch

    first = first_captions()
    names = list(first)[:5]
    ims = torch.stack([tiny_clip.preprocess(Image.open(FLICKR / "images" / n).convert("RGB")) for n in names])
    with torch.inference_mode():
        i = tiny_clip.model.encode_image(ims, normalize=True)
        t = tiny_clip.model.encode_text(tiny_clip.tokenizer([first[n] for n in names]), normalize=True)
    sims = (i @ t.T).numpy()
    assert (sims.argmax(0) == np.arange(5)).all() and (sims.argmax(1) == np.arange(5)).all()


@needs_shared
def test_same_weights_from_safetensors_file_and_pt_file(tmp_path, tiny_clip):
    import open_clip
    import torch

    cfg = json.loads((TINY / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "tiny-test-arch.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    tokens = tiny_clip.tokenizer(["a dog runs on the grass"])
    ref = tiny_clip.model.encode_text(tokens).detach()
    via_st = load_model("tiny-test-arch", str(TINY / "open_clip_model.safetensors"), device="cpu")
    assert same_model(via_st.identity, tiny_clip.identity)
    torch.save(via_st.model.state_dict(), tmp_path / "w.pt")
    via_pt = load_model("tiny-test-arch", str(tmp_path / "w.pt"), device="cpu")
    for m in (via_st, via_pt):
        torch.testing.assert_close(m.model.encode_text(tokens).detach(), ref)
    assert not same_model(via_pt.identity, tiny_clip.identity)  # another file, another sha256


@pytest.mark.parametrize("model,pretrained,msg", [
    ("ViT-B-99", "x", "unknown open_clip model"),
    ("ViT-B-32", "no-such-tag", "unknown pretrained tag"),
    ("ViT-B-32", "/no/such/weights.safetensors", "checkpoint file not found"),
    ("ViT-B-32", "laion2b_s34b_b79k", "cannot load model"),  # hub is offline in tests: fails fast, one line
])
def test_unavailable_models_fail_fast_with_one_line(model, pretrained, msg):
    with pytest.raises(ModelLoadError, match=msg) as e:
        load_model(model, pretrained, device="cpu")
    assert "\n" not in str(e.value)


def test_model_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="open_clip_config.json"):
        load_model(str(tmp_path))


def test_cuda_request_without_gpu_is_clear():
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_model("ViT-B-32", "random", device="cuda")


def test_same_model_rules():
    a = {"arch": "ViT-B-32", "pretrained": "random", "embed_dim": 512, "seed": 0, "weights_sha256": None}
    assert same_model(a, dict(a)) and not same_model(a, {**a, "seed": 1})
    assert not same_model({**a, "weights_sha256": "x"}, a)


@needs_shared
def test_trimmed_text_encoding_equals_open_clip(tiny_clip):
    import torch

    from retrieval.embed import Encoder
    from retrieval.embed.text_fast import encode_text_trimmed, supports_trimming

    assert supports_trimming(tiny_clip.model)
    caps = ["a dog.", "", "two children play football on a wide green field near a river bank ."] * 7
    caps.append("word " * 100)  # longer than the context: truncated by the tokenizer
    tokens = tiny_clip.tokenizer(caps)
    with torch.inference_mode():
        full = tiny_clip.model.encode_text(tokens)
        for group in (1, 4, 16, 64):
            torch.testing.assert_close(encode_text_trimmed(tiny_clip.model, tokens, group=group), full,
                                       atol=1e-5, rtol=1e-4)
    enc = Encoder(tiny_clip)
    assert enc.trim_text
    np.testing.assert_allclose(enc.tokens(tokens), Encoder(tiny_clip, trim_text=False).tokens(tokens), atol=1e-5)


def test_trimming_refused_for_non_causal_text_towers():
    import torch

    from retrieval.embed.text_fast import supports_trimming

    assert not supports_trimming(torch.nn.Linear(2, 2))


def _tiny_arch(tmp_path) -> str:
    """The tiny fixture's architecture registered with open_clip under a name of its own."""
    import open_clip

    cfg = json.loads((TINY / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "tiny-skip-arch.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    return "tiny-skip-arch"


@needs_shared
def test_checkpoint_load_skips_random_init_and_equals_the_plain_load(tmp_path, tiny_clip):
    import open_clip
    import torch

    from retrieval.embed import skip_init

    plain, _, _ = open_clip.create_model_and_transforms(_tiny_arch(tmp_path), device="cpu",
                                                        pretrained=str(TINY / "open_clip_model.safetensors"))
    ours = tiny_clip.model.state_dict()
    assert ours.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():   # bit for bit: every weight came from the file
        assert torch.equal(ours[name], value), name
    calls = []
    real = torch.nn.init.kaiming_uniform_
    torch.nn.init.kaiming_uniform_ = lambda t, *a, **k: calls.append(t.shape) or real(t, *a, **k)
    try:   # the loader builds the model with the initialisers switched off, then puts them back
        load_model(str(TINY), device="cpu")
        assert calls == []
        torch.nn.Linear(4, 4)
        assert calls == [(4, 4)]
    finally:
        torch.nn.init.kaiming_uniform_ = real
    assert all(getattr(torch.nn.init, n) is not skip_init._keep for n in skip_init.INITIALISERS
               if hasattr(torch.nn.init, n))


@needs_shared
def test_checkpoint_missing_a_weight_fails_and_leaves_init_working(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(TINY / "open_clip_model.safetensors"))
    dropped = next(k for k in weights if k.endswith("ln_final.weight"))
    save_file({k: v for k, v in weights.items() if k != dropped}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ModelLoadError, match="cannot load model") as e:
        load_model(_tiny_arch(tmp_path), str(tmp_path / "short.safetensors"), device="cpu")
    assert "\n" not in str(e.value)   # strict: a weight the file lacks is never left uninitialised
    w = torch.zeros(3, 3)
    torch.nn.init.ones_(w)
    assert bool((w == 1).all())


@needs_shared
def test_random_weights_are_still_initialised(tmp_path):
    import open_clip
    import torch

    arch = _tiny_arch(tmp_path)
    ours = load_model(arch, "random", device="cpu", seed=3).model.state_dict()
    torch.manual_seed(3)
    theirs = open_clip.create_model(arch, device="cpu").state_dict()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


def test_skipped_init_restores_the_initialisers_after_an_error():
    import torch

    from retrieval.embed.skip_init import skipped_init

    before = torch.nn.init.normal_
    w = torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with skipped_init():
            assert torch.nn.init.normal_(w) is w and bool((w == 0).all())   # a no-op inside
            raise RuntimeError("boom")
    assert torch.nn.init.normal_ is before
    with skipped_init(False):
        assert torch.nn.init.normal_ is before


def test_sha256_later_hashes_in_the_background_and_hands_errors_back(tmp_path):
    from retrieval.embed.models import sha256_file, sha256_later

    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * (5 << 20))
    assert sha256_later(str(f))() == sha256_file(f)
    assert sha256_later(None)() is None
    missing = sha256_later(str(tmp_path / "gone.bin"))
    with pytest.raises(FileNotFoundError):
        missing()


def test_a_model_built_with_init_waits_for_one_built_without():
    import threading

    import torch

    from retrieval.embed.skip_init import skipped_init

    inside, release, seen = threading.Event(), threading.Event(), []

    def skipping():
        with skipped_init():
            inside.set()
            release.wait(5)

    def initialising():
        with skipped_init(False):
            w = torch.zeros(3)
            torch.nn.init.ones_(w)
            seen.append(bool((w == 1).all()))

    a = threading.Thread(target=skipping)
    a.start()
    inside.wait(5)
    b = threading.Thread(target=initialising)
    b.start()
    b.join(0.2)
    assert b.is_alive() and seen == []   # waits while the initialisers are switched off
    release.set()
    a.join(5)
    b.join(5)
    assert seen == [True]



@needs_shared
def test_a_model_load_quiets_only_its_own_thread(monkeypatch, caplog):
    """open_clip's own log lines during a load are dropped, but only the loading thread's: a server
    loading its full model in the background still logs its requests' warnings meanwhile."""
    import logging
    import threading

    from retrieval._compat import import_open_clip

    open_clip = import_open_clip()
    create = open_clip.create_model_and_transforms

    def noisy(*args, **kwargs):
        logging.error("open_clip noise")          # open_clip logs through the root logger
        other = threading.Thread(target=lambda: logging.getLogger("retrieval.serve").warning("a request's warning"))
        other.start()
        other.join()
        return create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", noisy)
    with caplog.at_level(logging.INFO):
        load_model(str(TINY), device="cpu")
        logging.getLogger("retrieval.serve").warning("after the load")
    assert "a request's warning" in caplog.text and "after the load" in caplog.text
    assert "open_clip noise" not in caplog.text
