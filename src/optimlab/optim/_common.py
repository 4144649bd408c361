"""What the five optimizers share: torch.optim's argument checks, state layout and path choice.

Nothing here calls into torch.optim: only `torch.optim.Optimizer`, the base class, is used.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]
Closure = Callable[[], Any] | None


def check_lr(lr: float | Tensor) -> None:
    """torch.optim's learning-rate check: a non-negative float or a 1-element tensor."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(lr, "learning rate")


def check_nonnegative(value: float | Tensor, what: str) -> None:
    """Raise torch.optim's message for a negative (or NaN) `value`, e.g. "Invalid epsilon
    value: -1.0"."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def evaluate(closure: Closure) -> Any:
    """The closure's loss, computed with gradients on (`step` itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(group: dict[str, Any], optimizer: str) -> list[Tensor]:
    """The group's parameters that have a gradient: the others are skipped and get no state."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients")
        if p.is_complex():
            raise RuntimeError(f"{optimizer} does not support complex parameters")
    return params


def new_step_counter() -> Tensor:
    """A step count kept as torch.optim keeps it (a float32 0-dim CPU tensor), so that state
    dicts move between optimlab's and torch's optimizers."""
    return torch.tensor(0.0, dtype=torch.float32)


# Adam on CPU (benchmarks/optimizer_step.py and the notes of issue 8): below about 2^18
# parameter elements in all, the multi-tensor path is 6 to 40% faster than the for-loop (fewer
# calls per step; its temporaries stay in cache); from about 5e5 on it is slower (1.1 to 1.7x).
ADAM_FOREACH_CPU_MAX_NUMEL = 1 << 18


def use_foreach(foreach: bool | None, params: list[Tensor], cpu_max_numel: int = 0) -> bool:
    """The multi-tensor path when asked for, else where it is the faster one: on CUDA, and on
    CPU where the parameters have at most `cpu_max_numel` elements in all.

    On CPU the `torch._foreach_*` ops run tensor by tensor anyway and allocate whole lists of
    temporaries, so the for-loop path is faster there on large tensors (benchmarks/
    optimizer_step.py; torch.optim makes the same choice); on small ones it saves calls.
    """
    if foreach is not None:
        return foreach
    if not params:
        return False
    if all(p.device.type == "cuda" for p in params):
        return True
    on_cpu = all(p.device.type == "cpu" for p in params)
    return on_cpu and sum(p.numel() for p in params) <= cpu_max_numel


USE_EAGER = "pass compile=False to use the eager path"


def check_compilable(params: list[Tensor]) -> None:
    """Raise a RuntimeError that suggests compile=False when torch.compile cannot run here:
    dynamo unsupported on this Python, no C++ compiler for CPU tensors, or no Triton for GPU
    ones. A failure these checks miss surfaces, with the same advice, at the first step."""
    import torch._dynamo
    from torch.utils._triton import has_triton

    devices = {p.device.type for p in params}
    problem = None
    if not torch._dynamo.is_dynamo_supported():
        problem = "torch.compile is not supported on this Python"
    elif "cpu" in devices and not _has_cpp_compiler():
        problem = "torch.compile needs a C++ compiler for CPU tensors and found none"
    elif "cuda" in devices and not has_triton():
        problem = "torch.compile needs Triton for GPU tensors and cannot import it"
    if problem:
        raise RuntimeError(f"compile=True: {problem}; {USE_EAGER}")


def _has_cpp_compiler() -> bool:
    """Whether inductor finds the C++ compiler it would use (it runs `$CXX --version`)."""
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


@contextmanager
def explain_compile_failures() -> Iterator[None]:
    """Turn torch.compile's own failures (tracing, inductor, the C++ compiler, the recompile
    limit) into a RuntimeError that says so and suggests compile=False: never a silent
    fallback to eager."""
    try:
        yield
    except Exception as error:
        from torch._dynamo import exc

        if not isinstance(error, exc.TorchDynamoException | exc.FailOnRecompileLimitHit):
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise RuntimeError(
            f"compile=True: torch.compile failed ({type(error).__name__}: {first_line}); "
            f"{USE_EAGER}"
        ) from error


def layout(tensors: Iterable[Tensor]) -> tuple[Any, ...]:
    """What a compiled kernel is specialised to: each tensor's shape, strides, dtype, device."""
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)


def compiled_once(
    cache: dict[tuple[Any, ...], Callable[..., Any]], key: tuple[Any, ...], function: Callable
) -> Callable[..., Any]:
    """`function` through torch.compile, made at the first use of `key` (options and layout)
    and kept in `cache` for the process. Each gets a copy of `function` with its own code
    object, and so its own dynamo cache (dynamo keeps one per code object; torch 2.12's
    `isolate_recompiles=True` does the same, but this works on older torch too): it compiles
    once, and many optimizers or models in one process stay clear of dynamo's limit of 8
    recompilations per cache. Inductor's size asserts are off: dynamo's guards already check
    every input's shape and strides, and the asserts cost a third of the call on 100 inputs."""
    if key not in cache:
        cache[key] = torch.compile(
            _with_own_code(function),
            fullgraph=True,
            dynamic=False,
            options={"size_asserts": False},
        )
    return cache[key]


def _with_own_code(function: Callable) -> Callable:
    own = types.FunctionType(
        function.__code__.replace(),  # equal, but a new object
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    own.__kwdefaults__ = function.__kwdefaults__
    return functools.update_wrapper(own, function)
