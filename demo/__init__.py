"""Demo data: real Fashion-MNIST images, or tiny generated ones for the smoke run, as class folders."""
