"""The artifact store, its lineage graph and the stage runner. Imports no TensorFlow."""
