"""Create every declared topic that does not exist yet: ``python -m topics``."""

from streamlearn.settings import get_settings
from topics import declared, ensure_topics

settings = get_settings()
created = ensure_topics(settings)
for spec in declared(settings).values():
    mark = "created" if spec.name in created else "exists"
    print(f"{mark:8} {spec.name} partitions={spec.partitions} {spec.config}")
