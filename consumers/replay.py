"""Replay a file of historical events into the topics, with a progress bar.

Each line of the JSON-lines file is a recommendation (it has ``items``) or an outcome; it goes to
its topic, keyed by user as the storefront's own events are. A line that does not parse or
validate goes to the dead-letter topic with the reason, the file as its origin and the line
number as its offset; the replay goes on.

Run: ``python -m consumers.replay FILE`` (or ``streamlearn replay FILE``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from confluent_kafka import Producer
from rich.console import Console
from rich.progress import Progress

from streamlearn.errors import InvalidEventError
from streamlearn.events import DeadLetter, Outcome, Recommendation, parse
from streamlearn.settings import TopicRole, get_settings
from topics import ensure_topics, producer_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, help="JSON lines of recommendations and outcomes")
    args = parser.parse_args(argv)
    s = get_settings()
    ensure_topics(s)
    producer = Producer(producer_config(s))
    console = Console()
    lines = args.file.read_bytes().splitlines()
    counts: dict[TopicRole, int] = {"recommendations": 0, "outcomes": 0, "dead_letters": 0}
    with Progress(console=console) as bar:
        task = bar.add_task(f"replaying {args.file.name}", total=len(lines))
        for number, raw in enumerate(lines, start=1):
            bar.advance(task)
            if not raw.strip():
                continue
            try:
                role: TopicRole
                if b'"items"' in raw:
                    event: Recommendation | Outcome = parse(Recommendation, raw, s.max_record_bytes)
                    role = "recommendations"
                else:
                    event = parse(Outcome, raw, s.max_record_bytes)
                    role = "outcomes"
                topic, key, value = s.topic(role), event.user_id.encode(), raw
            except InvalidEventError as exc:
                letter = DeadLetter.of(str(exc), str(args.file), 0, number, None, raw, time.time())
                role = "dead_letters"
                topic = s.topic(role)
                key, value = str(args.file).encode(), letter.model_dump_json().encode()
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            counts[role] += 1
    left = producer.flush(60)
    console.print(
        f"{counts['recommendations']} recommendations, {counts['outcomes']} outcomes, "
        f"{counts['dead_letters']} to the dead-letter topic"
        + (f"; {left} NOT delivered" if left else "")
    )
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
