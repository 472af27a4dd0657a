"""The hospital's authority over its own node: site policy and audit log.

- ``policy``: the site policy (``policy.toml``), read once into a frozen record
- ``rules``: each rule's check of a run against the policy, and the suppression
  of aggregates that rest on too few records
- ``ledger``: the site's lifetime epsilon, persisted beside the policy
- ``audit``: the append-only, hash-chained JSONL log of every answered message
- ``mods``: the Flower client mods that enforce the policy and write the log

The ClientApp installs the mods (``ClientApp(mods=...)``); a SuperNode opts in with
``--node-config "policy='...' audit-log='...'"`` (``medflower deploy
start-supernode --policy --audit-log``). Without them nothing changes.
"""
