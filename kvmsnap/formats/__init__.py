"""The core file format: ``elf`` (ELF layouts as in ``<elf.h>``, note iteration), ``reader`` (any
ELF core, read and bounded), ``kvmsnap`` (kvmsnap's notes from a Snapshot, and a file back to a
validated Snapshot), ``layout`` (where everything goes), ``writer`` (writing it, sparse and atomic).
Nothing here needs the compiled KVM module or ``/dev/kvm`` (docs/core-format.md).

pyelftools bundles an old construct (``elftools.construct``); these modules import the real
``construct`` 2.10 package.
"""
