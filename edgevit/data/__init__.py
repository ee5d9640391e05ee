"""Image sets and preprocessing shared by every runtime."""
from edgevit.data.images import ImageSet, Preprocess, open_image_set

__all__ = ["ImageSet", "Preprocess", "open_image_set"]
