"""Device lists: parse `--device`, check it against the machine, name physical devices for leases.

`cuda` means every visible GPU, `cuda:0,cuda:2` names some, `cpu` is one CPU worker and
`cpu:0,cpu:1` several (how CI exercises the multi-worker logic). Every bad list is a one-line
usage error naming the devices this machine has.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from embed_collections.errors import UsageError

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
DEV = Path("/dev")
# The CPU flags are read here; another file makes the tests run as on the CPU it describes.
CPUINFO = Path(os.environ.get("EMBED_COLLECTIONS_CPUINFO", "/proc/cpuinfo"))
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512 BF16, AMX), Arm (bf16)


def gpu_driver_present() -> bool:
    """False only where CUDA surely cannot work: Linux without NVIDIA, ROCm or WSL2 GPU devices.

    WSL2 exposes the Windows driver as /dev/dxg, without any /dev/nvidia* file.
    """
    if not sys.platform.startswith("linux"):
        return True  # no cheap test elsewhere: ask torch
    return any(DEV.glob("nvidia[0-9]*")) or (DEV / "kfd").exists() or (DEV / "dxg").exists()


def cpu_has_bfloat16() -> bool | None:
    """Whether the CPU has bf16 arithmetic (AVX-512 BF16 or AMX on x86, BF16 on Arm); None where
    the CPU's flags cannot be read (not Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return bool(flags & CPU_BF16_FLAGS)


def cuda_device_count() -> int:
    """Visible CUDA devices (0 without CUDA or without torch)."""
    if not gpu_driver_present():
        return 0  # known without importing torch (seconds)
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


def available_devices(gpus: int | None = None) -> str:
    """The devices this machine offers, for error messages (`cpu, cuda:0, cuda:1`)."""
    count = cuda_device_count() if gpus is None else gpus
    return ", ".join(["cpu", *(f"cuda:{i}" for i in range(count))])


def parse_devices(text: str, gpus: int | None = None) -> list[str]:
    """`--device` as a list of concrete devices (`cuda` -> every visible GPU; `cpu` stays `cpu`).

    `gpus` overrides the visible GPU count (tests); a bad list is a UsageError.
    """
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    needs_count = not names or any(not name.lower().startswith("cpu") for name in names)
    # Counting GPUs imports torch (seconds): a CPU-only list does without it.
    count = gpus if gpus is not None else cuda_device_count() if needs_count else 0
    if not names:
        names = ["cuda"] if count else ["cpu"]
    devices: list[str] = []
    for name in names:
        match = _DEVICE.match(name.lower())
        if not match:
            raise UsageError(
                f'--device "{name}" is not a device; use cpu, cpu:N, cuda or cuda:N '
                f"(available: {available_devices(count)})"
            )
        kind, index = match.group(1), match.group(2)
        if kind == "cuda":
            if not count:
                raise UsageError(
                    f'--device "{name}": CUDA is not available on this machine '
                    f"(available: {available_devices(count)}); use --device cpu"
                )
            if index is None:
                devices.extend(f"cuda:{i}" for i in range(count))
                continue
            if int(index) >= count:
                raise UsageError(
                    f'--device "{name}": this machine has {count} visible GPU(s) '
                    f"(available: {available_devices(count)})"
                )
            devices.append(f"cuda:{int(index)}")
        else:
            devices.append("cpu" if index is None else f"cpu:{int(index)}")
    duplicates = sorted({d for d in devices if devices.count(d) > 1})
    if duplicates:
        raise UsageError(
            f"--device lists {', '.join(duplicates)} twice; name each device once "
            f"(available: {available_devices(count)})"
        )
    kinds = {d.split(":")[0] for d in devices}
    if len(kinds) > 1:
        raise UsageError(
            f'--device "{text}" mixes cpu and cuda; use one kind '
            f"(available: {available_devices(count)})"
        )
    return devices


def is_cuda(device: str) -> bool:
    """Whether a device string names a GPU."""
    return device.startswith("cuda")


def supports_bfloat16(device: str) -> bool:
    """Whether a device computes bf16 natively (CPU: yes, emulated where not; CUDA: Ampere+)."""
    if not is_cuda(device):
        return True
    import torch

    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def check_dtype(devices: list[str], dtype: str) -> None:
    """A usage error for `--dtype bfloat16` on a GPU without bf16 (T4, V100) or on a CPU without
    bf16 units, where it runs several times slower than float32."""
    if dtype != "bfloat16":
        return
    if any(not is_cuda(d) for d in devices) and cpu_has_bfloat16() is False:
        raise UsageError(
            "--dtype bfloat16: this CPU has no bf16 units (no avx512_bf16, amx_bf16 or bf16 "
            "flag), so bf16 would run several times slower than float32; use --dtype float32 "
            "or leave --dtype unset"
        )
    for device in devices:
        if is_cuda(device) and not supports_bfloat16(device):
            import torch

            name = torch.cuda.get_device_name(device)
            raise UsageError(
                f"--dtype bfloat16: {device} ({name}) has no bf16 support; "
                "use --dtype float16 or leave --dtype unset"
            )


def physical_key(device: str) -> str:
    """A name for the physical device behind `device`, stable across CUDA_VISIBLE_DEVICES.

    GPU UUID when torch reports it, else the PCI bus id, else the index after
    CUDA_VISIBLE_DEVICES remapping; CPU devices keep their own name (`cpu`, `cpu_1`).
    """
    if not is_cuda(device):
        return device.replace(":", "_")
    index = int(device.split(":")[1]) if ":" in device else 0
    try:
        import torch

        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid:
            return "cuda-" + re.sub(r"[^A-Za-z0-9-]", "", uuid)
        bus = str(getattr(props, "pci_bus_id", "") or "")
        if bus:
            return "cuda-pci-" + re.sub(r"[^A-Za-z0-9]", "_", bus)
    except Exception:  # no CUDA here, or an older torch without these properties
        pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    physical = visible[index] if index < len(visible) else str(index)
    return "cuda_" + re.sub(r"[^A-Za-z0-9-]", "_", physical)
