"""kslm: Su Jianlin's (kexue.fm) techniques as a PyTorch Lightning toolkit.

    import kslm
    model = kslm.load("checkpoints/NAME/last.ckpt")   # or a `kslm export` directory, or an NBCE config
    model.predict("一段文本")                          # the record `kslm predict` would write for it
"""

from kslm._version import __version__


def load(path, device="cpu", **options):
    """A trained model ready to predict (kslm.inference.load): a checkpoint, an export directory or an NBCE config."""
    from kslm.inference import load as _load

    return _load(path, device, **options)


__all__ = ["load", "__version__"]
