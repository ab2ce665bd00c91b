"""Versions and runs: the content-addressed store and its typed records, the lineage graph, the stage
contract, planning and the runner, and the store's upkeep (verify, repair, gc). Imports no TensorFlow
and none of the project's other packages."""
