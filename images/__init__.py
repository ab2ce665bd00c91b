"""Image files: is a file a whole image, and of what format and size (check). No TensorFlow."""
