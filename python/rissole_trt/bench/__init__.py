"""``rissole-trt bench``: throughput of the denoiser backends, side by side with the reference baseline.

One run times, on the same weights and in the same process:

* the **baseline** (:mod:`.baseline`): the authors' sampling procedure (eager fp32, block positions
  one after another, the full UNet forward with its conditioning at every step, DDPM over all T
  steps);
* our pipeline (:mod:`.run`) with each requested backend and precision, and every requested sampler;

and reports images/s end to end, ms per denoiser call, achieved FLOP/s against the machine's peak
measured on the spot (:mod:`.hardware`; FLOPs counted once with torch's FlopCounterMode,
:mod:`.flops`), retrieval queries/s, neighbour-gather GB/s, peak memory, the image difference of
reduced precision to fp32, and the goals met or missed (:mod:`.report`).

    from rissole_trt.bench import BenchOptions, run_bench, format_report
    report = run_bench(BenchOptions(preset="tiny", timing_steps=2))
    print(format_report(report))
"""

from .report import GOALS, evaluate_goals, format_report, write_json, write_plot
from .run import SCHEMA, BenchOptions, parse_sampler, run_bench

__all__ = ["BenchOptions", "run_bench", "parse_sampler", "format_report", "write_json", "write_plot",
           "evaluate_goals", "GOALS", "SCHEMA"]
