"""ams: the persistent catalogue of the AMS workflow (data, candidates and models).

>>> from ams import AMSDataStore, AMSModelDescr, UQType, UQAggregate
"""

from . import errors
from .errors import AMSStoreError
from .importer import ImportReport
from .store import AMSDataStore, RemoveReport
from .store_types import AMSModelDescr, Entry, UQAggregate, UQType, VerifyReport

__all__ = ["AMSDataStore", "AMSModelDescr", "AMSStoreError", "Entry", "ImportReport", "RemoveReport",
           "UQAggregate", "UQType", "VerifyReport", "errors"]
__version__ = "0.1.0"
