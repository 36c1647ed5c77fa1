"""``infra/services.sh acl PREFIX``: the ACL table lives in ``streams/runtime/acls.py`` (``ensure_topics`` uses it)."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.runtime.acls import _main  # noqa: E402

if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
