"""``python -m consumers.observe`` (``make observe``): Debian's Prometheus in the foreground,
scraping the processes of ``make run`` on this machine every 5 s with the project's recording
and alerting rules, its data under ``$STREAMLEARN_HOME/prometheus``, its UI on
``--listen`` (127.0.0.1:9090)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from streamlearn.observability import RULES, scrape_config
from streamlearn.processes import home
from streamlearn.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9090", help="host:port of its UI and API")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between scrapes")
    args = parser.parse_args(argv)
    binary = shutil.which("prometheus")
    if binary is None:
        print("no prometheus on PATH: `make prometheus` installs Debian's", file=sys.stderr)
        return 1
    where = home() / "prometheus"
    where.mkdir(parents=True, exist_ok=True)
    config = where / "prometheus.yml"
    # JSON is YAML too: Prometheus reads it as its configuration.
    config.write_text(json.dumps(scrape_config(get_settings(), RULES, args.every), indent=2))
    print(f"prometheus on http://{args.listen}, scraping as {config} says", flush=True)
    os.execv(
        binary,
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={where / 'data'}",
            f"--web.listen-address={args.listen}",
        ],
    )
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
