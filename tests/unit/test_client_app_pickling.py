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
