"""Denoiser backends behind one seam.

:mod:`.backend` defines the seam (:class:`Backend` and its declared :class:`Capabilities`);
:mod:`.registry` lists the backends and chooses among them (the only place that does); :mod:`.spec`
describes the per-step network's inputs once for all of them. ``rissole-trt info`` lists every
registered backend with its capabilities and whether it runs here.
"""
from .backend import Artifacts, Backend, Capabilities
from .registry import AUTO_ORDER, Candidate, backends, build, candidates, get, select
from .spec import StepSpec, TensorSpec, step_spec

__all__ = ["Artifacts", "Backend", "Capabilities", "AUTO_ORDER", "Candidate", "backends", "build", "candidates",
           "get", "select", "StepSpec", "TensorSpec", "step_spec"]
