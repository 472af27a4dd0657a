"""Vertical federated learning: hospitals hold different features of the same patients.

- ``psi``: patient alignment by private set intersection (ECDH-PSI)
- ``data``: vertically partitioned data (columns per hospital, one label holder)
- ``split``: the split network (bottom models per hospital, top at the label holder)
- ``party``: one hospital's side, independent of Flower's message classes
- ``coordinator``: the server's PSI relay and split training by batch
- ``actions``: the ``query.*`` actions, registered on the ClientApp
- ``client``, ``server``: the ClientApp handlers and the ServerApp path
"""
