"""The figures, by name, in the order a run measures them."""
from __future__ import annotations

from typing import Callable

from .accuracy import fig_time_to_85_cifar_vgg8, fig_time_to_99_mnist_kd
from .augmented import fig_kd_overhead_augmented_cached, fig_kd_speedup_augmented, fig_teacher_cache_build_s
from .core import Bench, Figure
from .crop import fig_batch_crop_speedup
from .kd import fig_k_students_shared_teacher, fig_kd_overhead_cached, fig_kd_overhead_online
from .methods import fig_method_epoch_cost
from .pipeline import fig_input_pipeline_share_vgg8, fig_input_pipeline_speedup_mlp
from .precision import fig_bf16_speedup_vgg, fig_compile_speedup_vgg8, fig_compile_speedup_vgg13
from .scaling import fig_cost_scaling_data, fig_cost_scaling_width, fig_hardware_utilisation_vgg
from .sweep import fig_sweep_throughput
FIGURES: dict[str, Callable[[Bench], Figure]] = {
    "input_pipeline_speedup_mlp": fig_input_pipeline_speedup_mlp,
    "input_pipeline_share_vgg8": fig_input_pipeline_share_vgg8,
    "kd_overhead_cached": fig_kd_overhead_cached,
    "kd_overhead_online": fig_kd_overhead_online,
    "kd_overhead_augmented_cached": fig_kd_overhead_augmented_cached,
    "kd_speedup_augmented": fig_kd_speedup_augmented,
    "teacher_cache_build_s": fig_teacher_cache_build_s,
    "bf16_speedup_vgg": fig_bf16_speedup_vgg,
    "compile_speedup_vgg8": fig_compile_speedup_vgg8,
    "compile_speedup_vgg13": fig_compile_speedup_vgg13,
    "hardware_utilisation_vgg": fig_hardware_utilisation_vgg,
    "time_to_99_mnist_kd": fig_time_to_99_mnist_kd,
    "time_to_85_cifar_vgg8": fig_time_to_85_cifar_vgg8,
    "cost_scaling_data": fig_cost_scaling_data,
    "cost_scaling_width": fig_cost_scaling_width,
    "k_students_shared_teacher": fig_k_students_shared_teacher,
    "batch_crop_speedup": fig_batch_crop_speedup,
    "method_epoch_cost": fig_method_epoch_cost,
    "sweep_throughput": fig_sweep_throughput,
}
