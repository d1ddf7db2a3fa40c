"""A trained run as a TensorFlow SavedModel that runs with TensorFlow alone
(``cln-textgen export``): the graph (``graph.py``), the in-graph detokeniser
(``detokenize.py``) and the versioned, all-or-nothing write (``savedmodel.py``)."""
