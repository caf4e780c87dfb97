"""The native op on every vector width it is written for (csrc/gated_delta_rule.c picks 16 floats with
AVX-512, 8 with AVX2, 4 with SSE or ARM NEON): each width built here (`library.built_with`) against the
float64 reference, forward and gradients; the stand-alone driver (tests/native/driver.c) on this machine; and
the ARM build, cross-compiled and run under qemu-user where the distribution's aarch64 compiler and
qemu-aarch64 are installed (apt install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)."""
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lmsleep.ops.delta_rule import library
from test_native import CASES, assert_gradients_match, check_against_reference
from test_op import random_inputs

HAS_COMPILER = library._compiler() is not None
needs_native = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
DRIVER = Path(__file__).parent / "native" / "driver.c"
X86 = platform.machine() in ("x86_64", "AMD64")
WIDE = [(37, 8, 16, 16), (65, 16, 32, 32), (129, 64, 64, 64), (50, 48, 3, 130), (13, 4, 5, 7)]


@needs_native
@pytest.mark.skipif(not X86, reason="the widths are forced by -DLMSLEEP_LANES on x86, where all three compile")
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("time,chunk_size,key_dim,value_dim", WIDE, ids=[f"T{t}-C{c}-K{k}-V{v}" for t, c, k, v in WIDE])
def test_every_width_matches_the_reference(lanes, time, chunk_size, key_dim, value_dim):
    assert (time, chunk_size, key_dim, value_dim) in CASES
    with library.built_with(f"-DLMSLEEP_LANES={lanes}"):
        assert library.lanes() == lanes
        check_against_reference(time, chunk_size, key_dim, value_dim, with_state=True, threads=2)


@needs_native
@pytest.mark.skipif(not X86, reason="x86 feature flags")
def test_the_default_width_follows_the_target():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    expected = 16 if " avx512f" in flags else 8 if " avx " in flags or " avx2" in flags else 4
    if library.target_flags() == ["-march=native"]:
        assert library.lanes() == expected
    with library.built_with("-mno-avx512f"):  # an AVX2 target on any x86-64-v3 machine
        assert library.lanes() == (8 if expected >= 8 else 4)


def _driver_case(time=45, chunk_size=16, key_dim=20, value_dim=9, batch=2, heads=3):
    torch.manual_seed(0)
    inputs = random_inputs(batch, time, heads, key_dim, value_dim, torch.float32, True)
    grad_out, grad_state = torch.randn(batch, time, heads, value_dim), torch.randn(batch, heads, key_dim, value_dim)
    header = np.array([batch, time, heads, key_dim, value_dim, chunk_size, 1], dtype=np.int32).tobytes()
    header += np.array([key_dim**-0.5], dtype=np.float32).tobytes()
    body = b"".join(x.contiguous().numpy().tobytes() for x in (*inputs, grad_out, grad_state))
    return inputs, grad_out, grad_state, header + body


def _run_driver(tmp_path, compile_command, run_prefix):
    inputs, grad_out, grad_state, payload = _driver_case()
    binary, source_in, result = tmp_path / "driver", tmp_path / "in.bin", tmp_path / "out.bin"
    built = subprocess.run([*compile_command, "-o", str(binary), str(DRIVER), "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    source_in.write_bytes(payload)
    ran = subprocess.run([*run_prefix, str(binary), str(source_in), str(result)], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, f"driver exited {ran.returncode}: {ran.stderr}"
    data = result.read_bytes()
    lanes = int(np.frombuffer(data[:4], dtype=np.int32)[0])
    floats = torch.from_numpy(np.frombuffer(data[4:], dtype=np.float32).copy())
    shapes = [inputs[2].shape, inputs[5].shape, *(x.shape for x in inputs)]
    pieces = list(torch.split(floats, [int(np.prod(s)) for s in shapes]))
    out, state, *grads = (piece.view(shape) for piece, shape in zip(pieces, shapes))
    assert_gradients_match(inputs, grad_out, grad_state, inputs[0].shape[-1] ** -0.5, out, state, grads)
    return lanes


@needs_native
def test_the_driver_on_this_machine(tmp_path):
    """The driver the ARM check relies on, built and run here with the library's own flags."""
    flags = [flag for flag in library.FLAGS if flag not in ("-shared", "-fPIC")] + library.target_flags()
    assert _run_driver(tmp_path, [library._compiler(), *flags], []) == library.lanes()


CROSS, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")


@pytest.mark.skipif(not (CROSS and QEMU), reason="no aarch64 cross-compiler or qemu-aarch64 installed "
                    "(apt install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)")
def test_the_arm_neon_build_under_qemu(tmp_path):
    """ARMv8 (NEON, 4 lanes, 32 vector registers): cross-compiled statically, run under user-mode emulation."""
    assert _run_driver(tmp_path, [CROSS, "-O3", "-march=armv8-a", "-std=gnu11", "-static"], [QEMU]) == 4
