"""``medflower audit``: membership-inference attacks on a saved model.

Members are a hospital's training records, non-members its held-out records (never
trained on). ``--attack loss`` (default): loss and confidence thresholds.
``--attack shadow``: a shadow-model attack (:mod:`app.privacy.shadow`) whose attacker
holds half of every hospital's held-out records; the attack is scored on the other
half. Run it where those records are (at the hospital): it prints only attack
metrics. Its arguments are declared in :mod:`scripts.audit_cli` (light, for
``--help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from app.client.hospital import train_settings
from app.config import RunConfig
from app.jsonio import dumps
from app.privacy.membership import AttackResult, audit_model
from app.privacy.shadow import (
    fit_shadow_attack,
    recipe_trainer,
    shadow_attack,
    split_attacker_data,
)
from data.base import standardized
from data.preprocessing import Standardizer
from data.registry import get_dataset
from data.spec import HospitalData, Split
from models import ModelSpec
from models.checkpoint import load_model
from models.training import pick_device


def audit_sites(
    cfg: RunConfig, model: Any, sites: list[HospitalData], device: Any
) -> dict[str, list[AttackResult]]:
    """Attack results per hospital (members: its train split; others: its held-out)."""
    return {
        site.name: audit_model(model, site.train, site.val, device) for site in sites
    }


def shadow_recipe(cfg: RunConfig, payload: dict[str, Any], device: Any):
    """The target's architecture and (centralised) training recipe for shadows.

    Epochs = rounds x local epochs, with the run's optimiser settings; shadows are
    trained without DP (the attacker's best guess of a memorising model).
    """
    spec = ModelSpec(**payload["model"])
    settings = train_settings(
        cfg, epochs=cfg.num_server_rounds * cfg.local_epochs, max_steps=0
    )
    return recipe_trainer(spec.build, settings, device)


def shadow_sites(
    cfg: RunConfig,
    payload: dict[str, Any],
    model: Any,
    sites: list[HospitalData],
    audited: list[HospitalData],
    device: Any,
    shadow_models: int,
) -> tuple[dict[str, list[AttackResult]], dict[str, int]]:
    """Shadow attack per audited hospital; attacker data: half of every held-out."""
    halves = {s.name: split_attacker_data(s.val, seed=cfg.seed) for s in sites}
    attacker = Split(
        np.concatenate([a.x for a, _ in halves.values()]),
        np.concatenate([a.y for a, _ in halves.values()]),
    )
    attack = fit_shadow_attack(
        shadow_recipe(cfg, payload, device),
        attacker,
        device,
        shadow_models=shadow_models,
        seed=cfg.seed,
    )
    results = {
        s.name: [shadow_attack(model, s.train, halves[s.name][1], attack, device)]
        for s in audited
    }
    return results, {"shadow_models": shadow_models, "attacker_records": len(attacker)}


def preprocessed(
    sites: list[HospitalData], payload: dict[str, Any]
) -> list[HospitalData]:
    """Apply the saved model's global standardisation (dp-global runs) to ``sites``."""
    prep = payload.get("preprocessing") or {}
    if prep.get("standardize") != "global":
        return sites
    scaler = Standardizer.from_dict(prep)
    return [standardized(s, scaler) for s in sites]


def all_sites(cfg: RunConfig, hospitals: int | None) -> list[HospitalData]:
    dataset = get_dataset(cfg.data_spec())
    count = hospitals
    if count is None:
        count = len(dataset.hospital_names(0)) if cfg.dataset == "heart-disease" else 4
    return [dataset.hospital(i, count) for i in range(count)]


def choose(sites: list[HospitalData], which: str) -> list[HospitalData]:
    if which == "all":
        return sites
    chosen = [s for i, s in enumerate(sites) if which in (str(i), s.name)]
    if not chosen:
        names = ", ".join(s.name for s in sites)
        raise SystemExit(f"--hospital {which!r}: not an index or one of {names}")
    return chosen


def run(args: argparse.Namespace) -> int:
    if args.shadow_models < 1:
        raise SystemExit(f"--shadow-models must be >= 1, got {args.shadow_models}")
    model, payload = load_model(args.model)
    cfg = RunConfig.from_saved(payload["run_config"])
    if args.data == "wdbc":
        cfg = cfg.replace(dataset="wdbc", data_path="")
    elif args.data:
        cfg = cfg.replace(dataset="heart-disease", data_path=str(Path(args.data)))
    sites = preprocessed(all_sites(cfg, args.hospitals), payload)
    audited = choose(sites, args.hospital)
    device = pick_device(args.device)
    extra: dict[str, Any] = {}
    if args.attack == "shadow":
        results, extra = shadow_sites(
            cfg, payload, model, sites, audited, device, args.shadow_models
        )
    else:
        results = audit_sites(cfg, model, audited, device)
    report = {
        "model": str(args.model),
        "dp": cfg.dp,
        "attack": args.attack,
        **extra,
        "hospitals": {
            name: {r.attack: r.to_dict() for r in res} for name, res in results.items()
        },
    }
    if args.json:
        print(dumps(report), end="")
        return 0
    print(f"Membership-inference audit of {args.model} (dp={cfg.dp})")
    print(
        f"{'hospital':<14}{'attack':<12}{'AUC':>7}{'TPR@1%FPR':>11}{'members':>9}"
        f"{'non-mem.':>9}"
    )
    for name, res in results.items():
        for r in res:
            print(
                f"{name:<14}{r.attack:<12}{r.auc:>7.3f}{r.tpr_at_1pct_fpr:>11.3f}"
                f"{r.members:>9}{r.non_members:>9}"
            )
    print("AUC 0.5 means the attack cannot tell members from non-members.")
    return 0
