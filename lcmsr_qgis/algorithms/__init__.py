"""One module per Processing algorithm; each imports the backend only when it runs."""


def all_algorithms():
    algorithms = []
    from importlib import import_module

    for module_name, class_name in _REGISTRY:
        module = import_module(f"{__name__}.{module_name}")
        algorithms.append(getattr(module, class_name)())
    return algorithms


# (module, class) — the order of the toolbox within each group.
_REGISTRY = [
    ("superresolve", "SuperResolveAlgorithm"),
    ("superresolve_many", "SuperResolveManyAlgorithm"),
    ("degrade", "DegradeAlgorithm"),
    ("evaluate", "EvaluateAlgorithm"),
    ("train_autoencoder", "TrainAutoencoderAlgorithm"),
    ("train_consistency", "TrainConsistencyAlgorithm"),
    ("train_decoder", "TrainDecoderAlgorithm"),
    ("finetune", "FinetuneAlgorithm"),
]
