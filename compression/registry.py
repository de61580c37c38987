"""The recipe methods: each compressed layer class registers itself with ``@register_method`` where it
is defined (timm's ``@register_model`` style), so a new layer needs no edit in ``recipe.py``;
the package's ``__init__`` imports every layer module, which registers them."""

from torch import nn

# method name -> {dense layer type -> compressed layer class (with a from_dense constructor)};
# "dense" keeps the layer as it is.
METHODS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {"dense": {}}


def register_method(method: str, dense: type[nn.Module]):
    """Class decorator: recipe ``method`` turns a ``dense`` layer into the decorated class (through
    its ``from_dense``). A (method, dense type) pair registered twice is a programming error."""

    def decorate(layer_class: type[nn.Module]) -> type[nn.Module]:
        if method == "dense":
            raise ValueError("'dense' is the built-in method that keeps a layer as it is")
        if not callable(getattr(layer_class, "from_dense", None)):
            raise TypeError(f"{layer_class.__name__} needs a from_dense(layer, initialize, **params) "
                            f"classmethod to be the recipe method {method!r}")
        registered = METHODS.setdefault(method, {})
        if dense in registered and registered[dense] is not layer_class:
            raise ValueError(f"method {method!r} for {dense.__name__} is already "
                             f"{registered[dense].__name__}, not {layer_class.__name__}")
        registered[dense] = layer_class
        return layer_class

    return decorate
