"""gRPC stubs generated from the repository's proto/ when the package is built (see setup.py).

Only the installed package has them; the source tree holds this file alone.
"""
