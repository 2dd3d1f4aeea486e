"""Parity of the compiled block ops (CPU, and CUDA when a GPU is present) with their torch references.

The ops are copies, so equality is bitwise: inputs are random bit patterns (NaNs, infinities and
subnormals included) and outputs are compared as integers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cuda_guards import NoUnsignedIndexing
from rissole_trt import ops
from rissole_trt.ops import (
    code_indices,
    gather_blocks,
    gather_blocks_reference,
    gather_code_blocks,
    gather_code_blocks_reference,
    merge_blocks,
    merge_blocks_reference,
    split_blocks,
    split_blocks_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _devices() -> list:
    devices = ["cpu"]
    if torch.cuda.is_available() and ops.cuda_kernels_available():
        devices.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return devices


DEVICES = _devices()


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A tensor of `dtype` whose elements are uniformly random bit patterns."""
    g = torch.Generator().manual_seed(seed)
    int_dtype = _INT_VIEW[dtype]
    info = torch.iinfo(int_dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=int_dtype).view(dtype)


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    actual, expected = actual.cpu(), expected.cpu()
    assert torch.equal(actual.view(_INT_VIEW[actual.dtype]), expected.view(_INT_VIEW[expected.dtype]))


# --------------------------------------------------------------------------- split / merge


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bf, shape", [(2, (3, 10, 16, 16)), (3, (2, 5, 9, 12)), (1, (1, 3, 5, 7)), (2, (1, 1, 2, 2))])
def test_split_merge_match_reference(device, dtype, bf, shape):
    z = random_bits(shape, dtype, seed=bf).to(device)
    blocks = split_blocks(z, bf)
    b, c, h, w = shape
    assert blocks.shape == (b, bf * bf, c, h // bf, w // bf)
    assert blocks.device == z.device
    assert_bitwise_equal(blocks, split_blocks_reference(z, bf))
    merged = merge_blocks(blocks, bf)
    assert_bitwise_equal(merged, merge_blocks_reference(blocks, bf))
    assert_bitwise_equal(merged, z)


def test_split_block_order_is_row_major():
    # 4x4 latent of distinct values, bf = 2: block p must cover rows (p // 2) * 2.., columns (p % 2) * 2..
    z = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    blocks = split_blocks(z, 2)
    assert blocks[0, 0, 0].tolist() == [[0, 1], [4, 5]]
    assert blocks[0, 1, 0].tolist() == [[2, 3], [6, 7]]
    assert blocks[0, 2, 0].tolist() == [[8, 9], [12, 13]]
    assert blocks[0, 3, 0].tolist() == [[10, 11], [14, 15]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_merge_non_contiguous_input(device, dtype):
    z = random_bits((2, 4, 12, 6), dtype, seed=7).to(device).transpose(2, 3)  # [2, 4, 6, 12], strided
    assert not z.is_contiguous()
    assert_bitwise_equal(split_blocks(z, 3), split_blocks_reference(z, 3))
    blocks = random_bits((2, 9, 4, 4, 3), dtype, seed=8).to(device)[:, :, ::2]  # channel stride 2
    assert not blocks.is_contiguous()
    assert_bitwise_equal(merge_blocks(blocks, 3), merge_blocks_reference(blocks, 3))


def test_split_merge_empty_batch():
    z = torch.empty(0, 3, 4, 4)
    assert split_blocks(z, 2).shape == (0, 4, 3, 2, 2)
    assert merge_blocks(torch.empty(0, 4, 3, 2, 2), 2).shape == (0, 3, 4, 4)


def test_split_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by the block factor 3"):
        split_blocks(torch.zeros(1, 2, 9, 10), 3)


@pytest.mark.parametrize("bf", [0, -1, 2.0, True])
def test_split_rejects_bad_block_factor(bf):
    with pytest.raises(ValueError, match="block factor"):
        split_blocks(torch.zeros(1, 2, 4, 4), bf)


def test_split_merge_reject_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        split_blocks(torch.zeros(2, 4, 4), 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        split_blocks(torch.zeros(1, 1, 4, 4, dtype=torch.int32), 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        split_blocks(torch.zeros(1, 1, 4, 4, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="expected bf \\* bf = 9"):
        merge_blocks(torch.zeros(1, 4, 2, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\[B, P, C, bh, bw\]"):
        merge_blocks(torch.zeros(4, 2, 2, 2), 2)


# --------------------------------------------------------------------------- gather_blocks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_images", [1, 1000])
@pytest.mark.parametrize("k", [1, 7])
@pytest.mark.parametrize("bf", [2, 3])
def test_gather_blocks_matches_reference(device, dtype, n_images, k, bf):
    c, bs, b = 3, 4 if bf == 2 else 3, 5
    db = random_bits((bf * bf, n_images, c, bs, bs), dtype, seed=n_images + k).to(device)
    ids = torch.randint(0, n_images, (b, k), generator=torch.Generator().manual_seed(k)).to(device)
    out = gather_blocks(db, ids)
    assert out.shape == (b, bf * bf, k * c, bs, bs)
    assert_bitwise_equal(out, gather_blocks_reference(db, ids))


def test_gather_blocks_channel_layout():
    # db value encodes (p, image, c); channel n*C + c of block p must come from image ids[b, n].
    p_, n_, c_ = 4, 6, 2
    db = torch.zeros(p_, n_, c_, 2, 2)
    for p in range(p_):
        for i in range(n_):
            for c in range(c_):
                db[p, i, c] = 100 * p + 10 * i + c
    ids = torch.tensor([[5, 0, 3]])
    out = gather_blocks(db, ids)
    for p in range(p_):
        for n, image in enumerate(ids[0].tolist()):
            for c in range(c_):
                assert out[0, p, n * c_ + c, 1, 1].item() == 100 * p + 10 * image + c


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_blocks_non_contiguous_input(device, dtype):
    db = random_bits((4, 20, 6, 4, 4), dtype, seed=3).to(device)[:, ::2]  # image stride 2
    ids = torch.tensor([[9, 0, 4], [1, 1, 1]]).t().to(device)  # [3, 2], transposed view
    assert not db.is_contiguous() and not ids.is_contiguous()
    assert_bitwise_equal(gather_blocks(db, ids), gather_blocks_reference(db, ids))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [-1, 10, 2**40])
def test_gather_blocks_rejects_out_of_range_ids(device, bad):
    db = torch.zeros(4, 10, 2, 2, 2, device=device)
    ids = torch.tensor([[0, 9], [3, bad]], device=device)
    with pytest.raises(IndexError, match=rf"neighbour id {bad} at \[1, 1\].*database of 10 images"):
        gather_blocks(db, ids)


def test_gather_blocks_rejects_bad_ids_and_db():
    db = torch.zeros(4, 10, 2, 2, 2)
    with pytest.raises(TypeError, match="integer tensor"):
        gather_blocks(db, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        gather_blocks(db, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[P, N, C, bh, bw\]"):
        gather_blocks(torch.zeros(4, 10, 2, 2), torch.zeros(1, 1, dtype=torch.int64))
    with pytest.raises(IndexError, match="database of 0 images"):
        gather_blocks(torch.zeros(4, 0, 2, 2, 2), torch.zeros(1, 1, dtype=torch.int64))


def test_gather_blocks_accepts_int32_ids_and_empty_k():
    db = random_bits((4, 10, 2, 3, 3), torch.float32, seed=1)
    ids32 = torch.tensor([[3, 1]], dtype=torch.int32)
    assert_bitwise_equal(gather_blocks(db, ids32), gather_blocks_reference(db, ids32.long()))
    assert gather_blocks(db, torch.zeros(2, 0, dtype=torch.int64)).shape == (2, 4, 0, 3, 3)


# --------------------------------------------------------------------------- gather_code_blocks


def random_codes(shape: tuple[int, ...], num_codes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_codes, size=shape, dtype=np.uint16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_images", [1, 1000])
@pytest.mark.parametrize("k", [1, 7])
@pytest.mark.parametrize("bf", [2, 3])
def test_gather_code_blocks_matches_reference(device, dtype, n_images, k, bf):
    num_codes, c, bs, b = 65536 if k == 7 else 5, 3, 3, 4  # 65536 covers codes above int16's range
    codes = random_codes((bf * bf, n_images, bs, bs), num_codes, seed=n_images + k)
    codebook = random_bits((num_codes, c), dtype, seed=k).to(device)
    ids = torch.randint(0, n_images, (b, k), generator=torch.Generator().manual_seed(bf))
    codes_t = torch.from_numpy(codes.view(np.int16)).to(device)
    expected = gather_code_blocks_reference(codes_t, codebook, ids.to(device))
    assert expected.shape == (b, bf * bf, k * c, bs, bs)
    assert_bitwise_equal(gather_code_blocks(codes_t, codebook, ids), expected)  # torch int16 view
    assert_bitwise_equal(gather_code_blocks(codes, codebook, ids), expected)  # numpy uint16


def test_gather_code_blocks_equals_gather_of_decoded_database():
    # codebook[codes] as a dense database, then gather_blocks, must give the same tensor.
    codes = random_codes((4, 12, 2, 2), 50, seed=0)
    codebook = torch.randn(50, 3)
    dense = codebook[torch.from_numpy(codes.astype(np.int64))].permute(0, 1, 4, 2, 3)  # [P, N, C, bh, bw]
    ids = torch.tensor([[11, 0, 5], [2, 2, 7]])
    assert torch.equal(gather_code_blocks(codes, codebook, ids), gather_blocks(dense.contiguous(), ids))


def test_gather_code_blocks_uint16_tensor():
    codes = random_codes((4, 6, 2, 2), 40000, seed=2)
    codebook = random_bits((40000, 2), torch.float16, seed=2)
    ids = torch.tensor([[5, 1]])
    codes_u16 = torch.from_numpy(codes.view(np.int16)).view(torch.uint16)
    with NoUnsignedIndexing():  # the reference's path is one a CUDA device can run
        reference = gather_code_blocks_reference(codes_u16, codebook, ids)
    assert_bitwise_equal(gather_code_blocks(codes_u16, codebook, ids), reference)


@pytest.mark.parametrize("as_int16_view", [False, True])
def test_code_indices_widen_codes_above_int16s_range(as_int16_view):
    codes = random_codes((2, 5, 3, 3), 65536, seed=4)
    codes[0, 0, 0, 0], codes[1, 4, 2, 2] = 65535, 32768  # the int16 view's -1 and minimum
    tensor = torch.from_numpy(codes.view(np.int16))
    tensor = tensor if as_int16_view else tensor.view(torch.uint16)
    rows = torch.tensor([[0], [1]])
    ids = torch.tensor([[0, 4], [4, 2]])
    with NoUnsignedIndexing():
        got = code_indices(tensor, rows, ids)
    assert got.dtype == torch.int64
    assert np.array_equal(got.numpy(), codes[rows.numpy(), ids.numpy()].astype(np.int64))


@pytest.mark.parametrize("device", DEVICES)
def test_gather_code_blocks_from_memmap(tmp_path, device):
    codes = random_codes((9, 300, 3, 3), 1024, seed=4)
    path = tmp_path / "codes.npy"
    np.save(path, codes)
    mapped = np.load(path, mmap_mode="r")
    codebook = random_bits((1024, 10), torch.bfloat16, seed=4).to(device)
    ids = torch.tensor([[299, 0, 17, 17], [5, 6, 7, 8]])
    expected = gather_code_blocks_reference(torch.from_numpy(codes.view(np.int16)).to(device), codebook, ids.to(device))
    assert_bitwise_equal(gather_code_blocks(mapped, codebook, ids), expected)
    # A strided (non C-contiguous) view takes the copy-the-needed-rows path.
    strided = mapped[:, ::2]
    expected = gather_code_blocks_reference(
        torch.from_numpy(np.ascontiguousarray(strided).view(np.int16)).to(device), codebook, ids.to(device) // 2
    )
    assert_bitwise_equal(gather_code_blocks(strided, codebook, ids // 2), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("as_numpy", [False, True])
def test_gather_code_blocks_rejects_out_of_range(device, as_numpy):
    codes = random_codes((4, 10, 2, 2), 8, seed=5)
    codes[2, 3, 1, 0] = 8  # image 3, block 2 holds a code outside a codebook of 8 entries
    codebook = torch.zeros(8, 4, device=device)
    arg = codes if as_numpy else torch.from_numpy(codes.view(np.int16)).to(device)
    with pytest.raises(IndexError, match="code 8 .*codebook of 8 entries"):
        gather_code_blocks(arg, codebook, torch.tensor([[1, 3]]))
    # Image 3 is not requested: its bad code is never read.
    assert gather_code_blocks(arg, codebook, torch.tensor([[1, 2]])).shape == (1, 4, 8, 2, 2)
    with pytest.raises(IndexError, match=r"neighbour id 10 at \[0, 1\]"):
        gather_code_blocks(arg, codebook, torch.tensor([[1, 10]]))


def test_gather_code_blocks_rejects_bad_arguments():
    codebook = torch.zeros(8, 4)
    ids = torch.tensor([[0]])
    with pytest.raises(TypeError, match="uint16"):
        gather_code_blocks(np.zeros((4, 2, 2, 2), dtype=np.int32), codebook, ids)
    with pytest.raises(TypeError, match="uint16"):
        gather_code_blocks(torch.zeros(4, 2, 2, 2, dtype=torch.int64), codebook, ids)
    with pytest.raises(ValueError, match=r"\[P, N, bh, bw\]"):
        gather_code_blocks(np.zeros((4, 2, 2), dtype=np.uint16), codebook, ids)
    with pytest.raises(ValueError, match=r"\[K, C\]"):
        gather_code_blocks(np.zeros((4, 2, 2, 2), dtype=np.uint16), torch.zeros(8), ids)
    with pytest.raises(TypeError, match="codebook must be float32"):
        gather_code_blocks(np.zeros((4, 2, 2, 2), dtype=np.uint16), torch.zeros(8, 4, dtype=torch.float64), ids)


@pytest.mark.skipif(ops.cuda_kernels_available(), reason="this build has the CUDA kernels")
def test_cuda_tensor_without_cuda_kernels_is_a_clear_error():
    # No GPU here either: fake a CUDA tensor's route by asking for the launch arguments directly.
    with pytest.raises(RuntimeError, match="built without its CUDA kernels"):
        ops._cuda_launch(torch.zeros(1), "split_blocks")
