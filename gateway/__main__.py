"""`python -m gateway` is `code-gateway`."""

from gateway.app import main

main()
