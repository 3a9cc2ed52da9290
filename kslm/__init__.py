"""kslm: Su Jianlin's (kexue.fm) techniques as a PyTorch Lightning toolkit."""

__version__ = "0.1.0"
