"""Decoders: raw note bytes in, plain JSON-ready data out (names and meanings, no text layout).

One module per concern: :mod:`.bits` (shared helpers), :mod:`.x86` (vCPU registers, XSAVE,
MSRs, CPUID, events), :mod:`.lapic`, :mod:`.devices` (irqchip, PIT, clock, UART), :mod:`.arm64`
(registers, FP/SIMD, KVM one-reg ids), :mod:`.linux` (process-core and vmcore notes).  Describing
the result for humans is :mod:`kvmsnap.describe`'s job.
"""
