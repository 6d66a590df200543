"""Error types whose messages are shown to users as one line: the problem and the fix."""


class MdmError(Exception):
    """Base class: `train.py`/`sample.py` print `error: <message>` and exit non-zero."""


class ConfigError(MdmError):
    """A config value that cannot work (unknown key, wrong type, impossible shape)."""


class DataError(MdmError):
    """A data source that is missing, empty or too small for the requested shapes."""


class CheckpointError(MdmError):
    """A checkpoint that is missing or disagrees with the config."""


class TrainingError(MdmError):
    """Training cannot go on (e.g. a non-finite loss)."""
