"""Benchmarks of the suite's speed claims, each a ratio against a baseline measured in the same run.

    python -m benchmarks [--quick] [--out results] [--only NAME[,NAME]] [--repeats N] [--threads N] [--list]

writes ``<out>/benchmarks.json`` and ``BENCHMARKS.md`` (repository root; ``--md`` elsewhere). Full mode
takes about 20 minutes on a free 2-core CPU (about 10 for the original figures, at most about 6 for
``time_to_85_cifar_vgg8``, 2-3 for the two compile figures), ``--quick`` about 3-5 minutes (smaller
data, fewer steps, one compiled model, no time-to-accuracy runs). Every timed quantity is the median of
``repeats`` (>= 3) runs, and the arms of one ratio are run interleaved (A, B, B, A, ...) so that a slow
spell of a shared machine hits both sides rather than one. Timings are only meaningful on an otherwise
idle machine: the load average at start and end is recorded in ``machine`` for that reason.

Figures (``--list`` prints them):

- ``input_pipeline_speedup_mlp``    seed-style PIL/DataLoader epoch / BatchLoader epoch, 800-800 MLP (>= 3.0)
- ``input_pipeline_share_vgg8``     loader-alone time / training time, VGG-8 w0.25 CIFAR-10 (<= 0.05)
- ``kd_overhead_cached``            KD epoch with cached teacher logits / CE epoch (<= 1.10)
- ``kd_overhead_online``            KD epoch, online teacher / (CE epoch + teacher inference) (<= 1.10)
- ``kd_overhead_augmented_cached``  crop+flip KD pass reading cached plan outputs / CE pass, VGG-8 (<= 1.10)
- ``kd_speedup_augmented``          the same KD pass with the online VGG-13 teacher / with cached plan outputs
- ``teacher_cache_build_s``         seconds to build one plan epoch of teacher outputs (45k images), fp16 cost
- ``bf16_speedup_vgg``              fp32 step / bf16-autocast step, channels_last VGG (>= 1.5)
- ``compile_speedup_vgg8``          eager step / ``torch.compile``d step, VGG-8 w0.25 (compile time in detail)
- ``compile_speedup_vgg13``         the same for VGG-13 w0.5 (full mode only)
- ``hardware_utilisation_vgg``      achieved training FLOP/s / measured fp32 matmul FLOP/s
- ``time_to_99_mnist_kd``           KD / scratch training seconds to 99% MNIST test accuracy (full mode)
- ``time_to_85_cifar_vgg8``         seconds to 85% CIFAR-10 test accuracy with cached-plan KD, or the accuracy
                                    reached in 8 epochs (full mode, needs the trained CIFAR-10 teacher)
- ``cost_scaling_data``             log-log slope of MLP epoch time vs training-set size
- ``cost_scaling_width``            log-log slope of VGG-8 step time vs width multiplier
- ``k_students_shared_teacher``     3 separate online-KD runs / 3 students sharing one teacher pass
- ``batch_crop_speedup``            old 4-D-indexing crop / gather crop (an optimisation, shown as its gain)
- ``method_epoch_cost``             every method's epoch through ``distill``/``fit`` / a CE epoch, one plan
- ``sweep_throughput``              4 short runs in sequence (2 threads) / the same 4 on a 2-worker pool

Layout: :mod:`~benchmarks.core` (timing helpers, :class:`Figure`, :class:`Sizes`, :class:`Bench`, the
shared building blocks), one module per group of figures (``pipeline``, ``kd``, ``augmented``,
``precision``, ``scaling``, ``accuracy``, ``crop``, ``methods``, ``sweep``), ``registry`` (:data:`FIGURES`), ``report``
(:func:`render_markdown`) and ``runner`` (:func:`run`, :func:`main`).
"""
from __future__ import annotations

from .accuracy import fig_time_to_85_cifar_vgg8, fig_time_to_99_mnist_kd
from .augmented import fig_kd_overhead_augmented_cached, fig_kd_speedup_augmented, fig_teacher_cache_build_s
from .core import (FULL, QUICK, TINY, Bench, Figure, Sizes, SkipFigure, interleaved_times, judge_met, median_time,
                   time_runs)
from .crop import fig_batch_crop_speedup
from .kd import fig_k_students_shared_teacher, fig_kd_overhead_cached, fig_kd_overhead_online
from .pipeline import SeedStyleDataset, fig_input_pipeline_share_vgg8, fig_input_pipeline_speedup_mlp
from .precision import fig_bf16_speedup_vgg, fig_compile_speedup_vgg8, fig_compile_speedup_vgg13
from .registry import FIGURES
from .report import render_markdown
from .runner import build_parser, machine_info, main, run
from .scaling import fig_cost_scaling_data, fig_cost_scaling_width, fig_hardware_utilisation_vgg

__all__ = ["Figure", "Sizes", "SkipFigure", "Bench", "FIGURES", "time_runs", "median_time",
           "interleaved_times", "judge_met", "render_markdown", "run", "main"]
