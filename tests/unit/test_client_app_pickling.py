"""The ClientApp object as Flower's simulation ships it to its actors."""


def test_client_app_pickles_as_a_reference_to_the_module_app():
    # Flower's simulation pickles the ClientApp (inside a closure, by cloudpickle)
    # with every message to a Ray actor: by value that was ~30 KB and ~8 ms each.
    import pickle

    import cloudpickle

    from app.client_app import app

    blob = cloudpickle.dumps(lambda: app)
    assert len(blob) < 2_000
    assert cloudpickle.loads(blob)() is app
    assert pickle.loads(pickle.dumps(app)) is app


LOAD_APPS = """
import sys
import app.client_app, app.server_app
heavy = {"torch", "pandas", "sklearn", "scipy", "monai", "opacus", "tenseal"}
print(sorted(heavy & set(sys.modules)))
print(sorted(app.client_app.app._registered_funcs))
"""


def test_loading_the_apps_imports_no_torch_and_registers_every_handler():
    # Flower's simulation loads both apps under one lock before it starts Ray:
    # torch imported there (~1-2 s) delayed every simulation's round 1.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", LOAD_APPS], capture_output=True, text=True, check=True
    )
    heavy, registered = out.stdout.strip().splitlines()
    assert heavy == "[]"
    for name in (
        "train.default",
        "evaluate.default",
        "query.decision_stats",
        "query.input_stats",
    ):
        assert name in registered, registered
    assert "query.secagg_setup" in registered and "query.psi_setup" in registered
