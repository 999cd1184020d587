"""``python -m kvmsnap``: the same CLI as the ``kvmsnap`` command."""
from .cli import main

main()
