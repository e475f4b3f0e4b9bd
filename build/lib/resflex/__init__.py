"""resflex: transfer learning of image classifiers with variable input sizes.

One set of weights, many input resolutions: a timm backbone maps any H×W image
to a feature map, an adaptive pooling head turns that map into a fixed-length
vector, and the schedule of input resolutions becomes a training knob.
"""

__version__ = "0.1.0"

__all__ = ["load_classifier"]


def __getattr__(name: str) -> object:
    """``from resflex import load_classifier`` without importing torch on ``import resflex``."""
    if name == "load_classifier":
        from resflex.inference import load_classifier

        return load_classifier
    raise AttributeError(f"module 'resflex' has no attribute {name!r}")
