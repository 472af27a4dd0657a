"""Secure aggregation for the Message-API strategies.

With ``secure-aggregation = true`` the server learns only the sum of the updates.

``aggregation-encryption`` picks the mechanism: ``masking`` (SecAgg+, default) or
``ckks`` (TenSEAL homomorphic encryption). Adding one = one module + one line
in ``registry``.

- ``registry``: aggregators by name, built from the run config
- ``protocol``: wire names shared by both parties; ``params``: validated parameters
- ``vectors``: flat update vectors, fixed-point encoding, pseudo-random masks
- ``aggregator``: what every secure aggregator gives the strategy (only a sum)
- ``secaggplus`` / ``secaggplus_client``: SecAgg+ server and hospital stages
- ``ckks`` / ``ckks_client``: CKKS server and hospital stages
- ``client_mod``: the ClientApp's train mod and ``query.*`` handlers
"""
