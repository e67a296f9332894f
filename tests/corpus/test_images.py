import io

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ItemError
from retrieval.corpus.images import decode_image, decode_text

from tests.conftest import make_image


def _bytes(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_plain_rgb_from_path_and_bytes(tmp_path):
    p = make_image(tmp_path / "a.jpg")
    im, repairs = decode_image(str(p))
    assert im.mode == "RGB" and im.size == (40, 30) and repairs == []
    im2, _ = decode_image(p.read_bytes())
    assert im2.size == (40, 30)


@pytest.mark.parametrize("data,reason", [
    (b"", "zero-byte"),
    (b"hello, I am a caption, not a picture", "not an image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(ItemError, match=reason):
        decode_image(data)


def test_zero_byte_and_missing_files(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(ItemError, match="zero-byte"):
        decode_image(str(tmp_path / "z.jpg"))
    with pytest.raises(ItemError, match="not found"):
        decode_image(str(tmp_path / "missing.jpg"))


def test_truncated_jpeg_is_an_item_error():
    rng = np.random.default_rng(0)
    data = _bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ItemError, match="unreadable"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused():
    data = _bytes(Image.new("1", (400, 300)))
    with pytest.raises(ItemError, match="decompression bomb"):
        decode_image(data, max_pixels=100_000)
    big = _bytes(Image.new("1", (10_000, 10_000)))  # 1e8 pixels > PIL's default limit, tiny file
    with pytest.raises(ItemError, match="decompression bomb"):
        decode_image(big)


def test_cmyk_is_converted():
    im, repairs = decode_image(_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert im.mode == "RGB" and "CMYK" in repairs[0]
    r, g, b = im.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta+yellow = red


def test_16bit_is_rescaled_not_clipped():
    a = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    im, repairs = decode_image(_bytes(Image.fromarray(a)))
    assert im.mode == "RGB" and "8-bit" in repairs[0]
    px = np.asarray(im)[..., 0]
    assert px[0, 0] == 0 and px[0, 1] == 255 and 120 < px[1, 0] < 135


def test_palette_with_transparency_composited_on_white():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0] * 256)
    im, repairs = decode_image(_bytes(p, transparency=0))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)
    assert "alpha" in repairs[0]
    la, _ = decode_image(_bytes(Image.new("LA", (4, 4), (0, 255))))
    assert la.getpixel((1, 1)) == (0, 0, 0)


def test_decode_text_repairs_and_normalises():
    assert decode_text(b"\xef\xbb\xbfa  dog\n on a\tbeach ") == ("a dog on a beach", [])
    text, repairs = decode_text(b"caf\xe9 au lait")
    assert text == "caf\ufffd au lait" and "UTF-8" in repairs[0]
    assert decode_text(b"   \n") == (None, [])
    assert decode_text(None) == (None, [])
