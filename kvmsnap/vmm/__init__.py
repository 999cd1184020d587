"""The embedded VMM: guest RAM, vCPU threads and their run loop, the UART, pause and resume."""
from .machine import Machine, MachineError

__all__ = ["Machine", "MachineError"]
