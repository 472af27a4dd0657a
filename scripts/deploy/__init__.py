"""``medflower deploy``: one SuperLink, one SuperNode per hospital, TLS, authenticated.

- ``cli``: the ``deploy`` subcommands
- ``pki``: the CA, TLS certificates and SuperNode key pairs
- ``processes``: background Flower processes (pid and log files, stop by group)
"""
