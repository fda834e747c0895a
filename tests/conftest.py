import sys
from pathlib import Path

# Lets tests import the shared helpers as `support.*`.
sys.path.insert(0, str(Path(__file__).parent))
