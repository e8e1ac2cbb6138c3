#!/usr/bin/env python3
"""Renders chat templates with Python's jinja2 in the environment Hugging Face transformers uses
for apply_chat_template: an immutable sandbox with trim_blocks and lstrip_blocks, the loop controls
extension, a {% generation %} tag that renders its body, a tojson filter that is json.dumps with
ensure_ascii=False (keys in insertion order), and raise_exception / strftime_now globals.

Reads a JSON array of {"template", "variables"} on stdin and writes a JSON array of results:
{"prompt": text} or {"error": message, "raised": true when the template called raise_exception}.
strftime_now formats the fixed time given as argv[1] ("YYYY-MM-DD HH:MM:SS"), so runs are repeatable.
Exits 3 when jinja2 cannot be imported.
"""
import json
import sys
from datetime import datetime

try:
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    sys.exit(3)


class Raised(TemplateError):
    """What raise_exception throws, told apart from jinja2's own errors."""


class GenerationTag(Extension):
    # transformers marks assistant text with {% generation %}...{% endgeneration %}; the text renders as is.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def make_environment(now):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise Raised(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: now.strftime(fmt)
    return env


def main():
    now = datetime.strptime(sys.argv[1], "%Y-%m-%d %H:%M:%S")
    env = make_environment(now)
    requests = json.load(sys.stdin)
    compiled = {}
    results = []
    for req in requests:
        try:
            source = req["template"]
            if source not in compiled:
                compiled[source] = env.from_string(source)
            results.append({"prompt": compiled[source].render(**req["variables"])})
        except Raised as e:
            results.append({"error": e.message, "raised": True})
        except Exception as e:  # any other failure: its kind and message, for the report
            results.append({"error": f"{type(e).__name__}: {e}", "raised": False})
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
