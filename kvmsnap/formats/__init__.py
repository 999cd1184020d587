"""Byte layouts, declared once as construct Structs and used to both parse and build.

``elf``: ELF64/ELF32 headers as in ``<elf.h>``.  ``x86``: the ``<linux/kvm.h>`` structs kept in
:mod:`kvmsnap.state`, the Linux x86-64 core-dump structs, QEMU's ``QEMUCPUState`` and kvmsnap's UART
state.  Nothing here needs the compiled KVM module or ``/dev/kvm``.

pyelftools bundles an old construct (``elftools.construct``); these modules import the real
``construct`` 2.10 package.
"""
