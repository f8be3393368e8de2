"""Parses a Prometheus text exposition (standard input) with the reference
parser, prometheus_client.parser; prints every family as JSON:
{name: {"type": ..., "samples": [[name, labels, value], ...]}}. Exits
non-zero if the text does not parse."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in families:
        sys.exit(f"family {f.name} appears twice")
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, None if math.isinf(s.value) else s.value] for s in f.samples],
    }
print(json.dumps(families))
