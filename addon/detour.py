"""mitmproxy entry point: `mitmdump -s addon/detour.py`.

Scripts loaded with `-s` are not registered in sys.modules, which breaks dataclasses; so this file
only imports the real addon from the `addon` package (installed, or found next to this file).
"""

import sys
from pathlib import Path

try:
    from addon.mitm.addon import Detour
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from addon.mitm.addon import Detour

addons = [Detour()]
