"""A reviewer's ``medflower deploy`` commands: an Ed25519 key pair and signed
approvals of the app builds hospitals may run (:mod:`scripts.deploy.approval`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.deploy.common import party_dir
from scripts.deploy.pki import (
    DeployError,
)


def cmd_reviewer_keys(args: argparse.Namespace) -> int:
    from scripts.deploy.approval import (
        create_reviewer_keys,
        key_id,
        parse_reviewer_public_key,
    )

    files = create_reviewer_keys(
        party_dir(args) / "keys", args.name, overwrite=args.force
    )
    key = parse_reviewer_public_key(files.public.read_text(), str(files.public))
    print(f"Signing key (keep secret, mode 0600): {files.private}")
    print(f"Public key (give to the hospitals that trust you): {files.public}")
    print(f"Key id (fingerprint): {key_id(key)}")
    return 0


def cmd_sign_app(args: argparse.Namespace) -> int:
    from scripts.deploy import approval

    key_path = Path(args.key).expanduser()
    key = approval.load_reviewer_private_key(key_path)
    if args.fab:
        fab_path = Path(args.fab).expanduser()
        if not fab_path.is_file():
            raise DeployError(f"FAB file not found: {fab_path}")
        fab, what = fab_path.read_bytes(), str(fab_path)
    else:
        app_dir = Path(args.app).expanduser().resolve()
        fab, what = approval.build_fab(app_dir), f"the app in {app_dir}"
    signed = approval.sign_fab(fab, key, args.reviewer or key_path.stem)
    path = signed.write(Path(args.out).expanduser().resolve())
    print(f"Signed {what}: build sha256 {signed.fab_sha256} ({len(fab)} bytes)")
    print(f"Approval by {signed.reviewer} ({signed.public_key_id}): {path}")
    print("A hospital runs this build once the file is in its approvals/ folder.")
    return 0
