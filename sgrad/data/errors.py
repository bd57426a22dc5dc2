"""The error every data problem raises: it says which file or folder and what to do."""


class DatasetError(RuntimeError):
    pass
