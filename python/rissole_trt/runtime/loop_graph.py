"""A whole sampling loop captured once per batch shape and sampler, then replayed per batch.

With per-step CUDA graphs a step still costs a copy in, a launch, a copy out and the sampler's
update issued from Python. For a fixed sampler everything in its loop is fixed but the data: the
timesteps and the update coefficients are Python constants baked into the capture, and the time
embedding rows are slices of the (static) table. So the whole loop (every denoiser call and every
update, with the optional codebook clip) is captured as one graph. What changes per batch lives in
static buffers that a replay reads:

* ``x_T`` and, for stochastic samplers, every step's noise, drawn before the replay from each
  image's own generator in the order the eager loop (:func:`rissole_trt.diffusion.sample`) draws
  them, so a seed gives the same images either way;
* the denoiser's hoisted tensors (neighbour features, position rows), copied in from the batch's
  :class:`BlockDenoiser`, and the codebook clip's bounds (held by the loop, as a graph needs).

With ``overlap="half"`` the denoiser is a :class:`~rissole_trt.windows.WindowedDenoiser`: its
window crop and blend are fixed data movement and arithmetic, so they are captured inside every step
too, and only its row denoiser's hoisted tensors are static buffers.

How the loop is recorded is separate from what it does: :func:`cuda_capture` records it as a
``torch.CUDAGraph``; :func:`eager_capture` (the CPU-checkable twin) runs the same loop function over
the same static buffers at every replay, so the staging, the refresh of the buffers and the
per-image noise are tested on the CPU (``tests/test_loop_graph.py``); only the CUDA recording
itself needs a GPU. A NaN in ε cannot stop a replay mid-loop (a graph has no Python in it), so the
caller checks the result once.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from ..diffusion.samplers import Sampler
from ..diffusion.sampling import clip_x0, draw_noise, sample
from ..errors import InvalidArgumentError
from ..models.rissole import BlockDenoiser
from ..windows import WindowedDenoiser

__all__ = ["LOOP_SAMPLERS", "Capture", "cuda_capture", "eager_capture", "CapturedLoop", "LoopGraphs"]

#: Samplers whose whole loop is captured. DDPM's 1000 steps are left to the per-step graphs: its
#: staged noise would take 999 times the batch's latent memory and the launches it saves are a
#: smaller share of its time.
LOOP_SAMPLERS = ("ddim", "dpmpp_2m")

#: ``capture(run) -> (replay, output)``: record ``run()`` (no arguments; reads and writes only
#: static tensors) so that ``replay()`` recomputes ``output`` in place from the current buffers.
Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]

_CUDA_WARMUP_RUNS = 2  # on a side stream before capture, as torch's CUDA-graph notes require


def cuda_capture(run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Record ``run`` as one CUDA graph (after warm-up runs on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(_CUDA_WARMUP_RUNS):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run()
    return graph.replay, output


def eager_capture(run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """The CPU twin of :func:`cuda_capture`: a replay reruns ``run`` and writes into the same output."""
    output = run()

    def replay() -> None:
        output.copy_(run())

    return replay, output


#: What a loop samples with: the blocks' own denoiser, or the shifted windows over a row denoiser.
LoopDenoiser = BlockDenoiser | WindowedDenoiser


def _rows(denoiser: LoopDenoiser) -> BlockDenoiser:
    """The denoiser that holds ``denoiser``'s per-batch tensors."""
    return denoiser.inner if isinstance(denoiser, WindowedDenoiser) else denoiser


def _static_copy(denoiser: LoopDenoiser) -> LoopDenoiser:
    """``denoiser`` with private copies of its hoisted tensors (the buffers a capture reads)."""
    if isinstance(denoiser, WindowedDenoiser):
        return denoiser.with_inner(_static_copy(denoiser.inner))
    static = copy.copy(denoiser)
    static.cond_feat = denoiser.cond_feat.clone()
    static.pos_bias = None if denoiser.pos_bias is None else denoiser.pos_bias.clone()
    static.time_table = denoiser.time_table.clone()
    return static


class CapturedLoop:
    """One sampler's whole loop over one batch shape, recorded once by ``capture``."""

    def __init__(self, denoiser: LoopDenoiser, sampler: Sampler, shape: Sequence[int], *,
                 clip: tuple[torch.Tensor, torch.Tensor] | None = None, capture: Capture = cuda_capture) -> None:
        if sampler.name not in LOOP_SAMPLERS:
            raise InvalidArgumentError(f"the {sampler.name} loop is not captured whole (only {', '.join(LOOP_SAMPLERS)})")
        self.shape = tuple(shape)
        self.sampler = sampler
        self.noisy_steps = [i for i in range(sampler.num_steps) if sampler.needs_noise(i)]
        device = _rows(denoiser).cond_feat.device
        self.x_T = torch.zeros(self.shape, device=device)
        self.step_noise = torch.zeros((len(self.noisy_steps),) + self.shape, device=device)
        self.denoiser = _static_copy(denoiser)
        # Held here, like every buffer a replay reads: a graph keeps only the addresses it recorded,
        # so bounds freed after capture would be read as whatever memory reuses them.
        self.clip = None if clip is None else tuple(bound.clone() for bound in clip)
        eps_fn = self.denoiser
        if self.clip is not None:
            eps_fn = clip_x0(eps_fn, sampler.schedule, *self.clip)
        slot = {step: j for j, step in enumerate(self.noisy_steps)}

        def run() -> torch.Tensor:
            return sample(eps_fn, self.shape, sampler.schedule, sampler, noise=self.x_T,
                          noise_fn=lambda i: self.step_noise[slot[i]])

        self.replay, self.output = capture(run)

    def __call__(self, denoiser: LoopDenoiser, generator,
                 clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The sample for ``denoiser``'s neighbours with noise from ``generator`` (as
        :func:`rissole_trt.diffusion.sample` takes it) and x0 clamped to ``clip`` if the loop was
        captured with one; a new tensor."""
        if isinstance(denoiser, WindowedDenoiser) != isinstance(self.denoiser, WindowedDenoiser):
            raise InvalidArgumentError("this loop was captured for another overlap (windows or aligned blocks)")
        static, denoiser = _rows(self.denoiser), _rows(denoiser)
        if denoiser.rows != static.rows or (denoiser.pos_bias is None) != (static.pos_bias is None):
            raise InvalidArgumentError(f"this loop was captured for {static.rows} rows, got {denoiser.rows}")
        if (clip is None) != (self.clip is None):
            raise InvalidArgumentError("this loop was captured " + ("without" if clip is not None else "with")
                                       + " a clip of x0")
        for buffer, bound in zip(self.clip or (), clip or ()):
            buffer.copy_(bound)
        static.cond_feat.copy_(denoiser.cond_feat)
        if static.pos_bias is not None:
            static.pos_bias.copy_(denoiser.pos_bias)
        static.time_table.copy_(denoiser.time_table)
        # The eager loop's draw order: x_T, then each noisy step's tensor.
        self.x_T.copy_(draw_noise(self.shape, generator, device=self.x_T.device))
        for j in range(len(self.noisy_steps)):
            self.step_noise[j].copy_(draw_noise(self.shape, generator, device=self.x_T.device))
        self.replay()
        return self.output.clone()


class LoopGraphs:
    """Captured loops keyed by batch shape, sampler settings and clip; each captured on first use."""

    def __init__(self, capture: Capture = cuda_capture) -> None:
        self.capture = capture
        self._loops: dict[tuple, CapturedLoop] = {}

    def __len__(self) -> int:
        return len(self._loops)

    def sample(self, denoiser: LoopDenoiser, sampler: Sampler, shape: Sequence[int], generator, *,
               clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # The clip bounds are the model's (one per backend), so whether there is one is the key.
        key = (tuple(shape), sampler.name, sampler.timesteps, getattr(sampler, "eta", None), clip is not None)
        key += (isinstance(denoiser, WindowedDenoiser),)  # the windows' step is another computation
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = CapturedLoop(denoiser, sampler, shape, clip=clip, capture=self.capture)
        return loop(denoiser, generator, clip)
