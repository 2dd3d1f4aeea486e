"""Peak resident memory per image (generate) and per denoiser row (build-engine) on the built-in model.

Run: ``OMP_NUM_THREADS=1 python scripts/measure_step_memory.py 16 64`` (every measurement in a fresh
subprocess; VmHWM of /proc/self/status is the process's peak RSS, what the OOM killer counts).
The slopes between the two sizes are the constants of rissole_trt.memory.
"""
import subprocess
import sys

CHILD = r"""
import sys, torch
from rissole_trt import Engine
from rissole_trt.runtime.engine_build.candidates import bucket_inputs
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
engine = Engine(device="cpu")
engine.generate(1, sampler="ddim", steps=1, batch_size=1, progress=False)
mode, b = sys.argv[1], int(sys.argv[2])
if mode == "generate":
    engine.generate(b, sampler="ddim", steps=1, batch_size=b, progress=False)
else:  # one step of the per-step network over b rows, its inputs and output kept (as build-engine does)
    with torch.no_grad():
        inputs = bucket_inputs(engine.model, b, 0)
        out = engine.model.unet.forward_hoisted(*inputs)
print(status("VmRSS:"), status("VmHWM:"))
"""


def measure(mode: str, size: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(size)], capture_output=True, text=True, check=True)
    held, peak = out.stdout.split()[-2:]
    return int(held), int(peak)


if __name__ == "__main__":
    small, large = (int(v) for v in sys.argv[1:3])
    for mode, unit, scale in (("generate", "image", 1), ("step", "row", 9)):
        (h1, p1), (h2, p2) = measure(mode, small * scale), measure(mode, large * scale)
        span = (large - small) * scale
        print(f"{mode}: peak {p1 / 2**20:.1f} -> {p2 / 2**20:.1f} MiB; per {unit}: peak "
              f"{(p2 - p1) / span:.0f} B, held after {(h2 - h1) / span:.0f} B")
