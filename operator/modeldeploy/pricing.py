"""What a replica costs per hour on a hardware class, from the prices in the settings.

A GPU replica costs its GPUs at the price of the class's ``nvidia.com/gpu.product``; a CPU
replica its requested vCPUs and GiB of memory at the vCPU-hour and GiB-hour prices; either
is scaled by the multiplier of the class's price-label value (a spot marker, say). A class
the settings give no price for has no cost (None): with prices set, it ranks after every
priced class and a budget cannot admit it. Pure: no I/O.
"""

from __future__ import annotations

from modeldeploy.capacity import Resources
from modeldeploy.catalog import Accelerator
from modeldeploy.config import OperatorConfig
from modeldeploy.nodes import HardwareClass

GIB = 1024**3
DIGITS = 4  # costs are kept to 1/10000 of the currency unit


def replica_cost(
    cls: HardwareClass, per_replica: Resources, config: OperatorConfig
) -> float | None:
    """One replica's price per hour on ``cls``, or None when the settings do not price it."""
    if not config.priced:
        return None
    if cls.accelerator is Accelerator.GPU:
        price = config.gpu_prices_per_hour.get(str(cls.gpu_product))
        if price is None:
            return None
        cost = price * per_replica.gpus
    else:
        vcpu, gib = config.cpu_price_per_vcpu_hour, config.memory_price_per_gib_hour
        if vcpu is None and gib is None:
            return None
        cost = (vcpu or 0.0) * per_replica.cpu_millis / 1000
        cost += (gib or 0.0) * per_replica.memory_bytes / GIB
    if cls.price_label is not None and cls.price_label[1] is not None:
        cost *= config.price_label_multipliers.get(cls.price_label[1], 1.0)
    return round(cost, DIGITS)


def money(value: float) -> str:
    """A cost for messages: ``$1.20/h``, ``$0.1117/h`` (two to four decimals)."""
    text = f"{value:.{DIGITS}f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}/h"
