"""Decoders shared by every architecture: raw note bytes in, plain JSON-ready data out (names and
meanings, no text layout).  :mod:`.bits` (helpers), :mod:`.linux` (process-core and vmcore notes);
each architecture's own are ``kvmsnap.arch.<arch>.decode``.  Describing the result for humans is
:mod:`kvmsnap.describe`'s job.
"""
