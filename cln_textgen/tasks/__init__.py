"""The tasks of the training loop (:mod:`cln_textgen.training.task`): the
conditional LM, the label classifier and masked-LM pretraining."""
