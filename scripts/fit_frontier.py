"""Front-end: a fit's frontier table (Markdown) and size-quality plot from OUT/fit.json.

    python scripts/fit_frontier.py /tmp/fit/minilm results/fit/minilm_android
"""

import argparse
import json
from pathlib import Path

from edgecomp.fit.summary import frontier_markdown, plot_frontier

ap = argparse.ArgumentParser()
ap.add_argument("export_dir", type=Path)
ap.add_argument("stem", type=Path, help="writes STEM.md, STEM.json and STEM.png")
a = ap.parse_args()
fit = json.loads((a.export_dir / "fit.json").read_text())
a.stem.parent.mkdir(parents=True, exist_ok=True)
a.stem.with_suffix(".json").write_text(json.dumps(fit, indent=2) + "\n")
a.stem.with_suffix(".md").write_text(f"# edgecomp fit: {fit['model']} -> {fit['target']}\n\n" + frontier_markdown(fit)
                                     + f"\n![frontier]({a.stem.name}.png)\n")
plot_frontier(fit, a.stem.with_suffix(".png"))
print(a.stem.with_suffix(".md").read_text())
