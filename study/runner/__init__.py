"""Running a study with Ray Tune: the command, pre-flight checks, searchers, the sink, the trainable, TensorBoard.
The only package of study that imports Ray."""
