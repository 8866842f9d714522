"""Bounded templates: every filter, method and operator that can build a result far larger than its inputs is
refused before it builds it, and still renders what Jinja renders in ordinary use.

Each hostile template below would build more than 1 GB (most of them 10 GB or more) under the default limits
(``max_template_chars`` 10 000 000): it must be refused with a :class:`ChatFormatError` naming the operation,
with a peak of Python memory far below that. They run in one child process whose address space is capped, so
that a bound that regresses fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from preprocess.chat import ChatFormatError, render_chat
from preprocess.limits import MediaLimits

HELLO = [{"role": "user", "content": "hi"}]
PEAK_LIMIT = 256 * 2**20  # bytes of Python memory a refused template may take (the hostile ones reach ≥ 1 GB)
BIG = "[['x' * 10000000] * 100] * 100"  # 10 MB of memory whose text is 100 000 times longer

# (id, template, what the refusal names)
HOSTILE = [
    ("indent", "{{ ('x\\n' * 1000) | indent(10000000) }}", "the indent filter would hold 10020002001"),
    ("indent-string", "{{ ('x\\n' * 100000) | indent('y' * 100000) }}", "the indent filter would hold 10000400001"),
    ("join-items", "{{ (['x' * 10000000] * 1000) | join }}", "the join filter would hold more than 10000000"),
    ("join-separator", "{{ ('x' * 100000) | join('y' * 100000) }}", "the join filter would hold 10000100000"),
    ("join-lazy", "{{ (['x' * 10000000] * 1000) | map('string') | join }}", "the map filter"),
    ("str.join", "{{ ('y' * 100000).join('x' * 100000) }}", r"join\(\) would hold 10000100000"),
    ("replace", "{{ ('x' * 100000) | replace('x', 'y' * 100000) }}", "the replace filter would hold 10000000000"),
    ("str.replace", "{{ ('x' * 100000).replace('x', 'y' * 100000) }}", r"replace\(\) would hold 10000000000"),
    ("center", "{{ (" + BIG + ") | center(10) }}", "the center filter would hold more than"),
    ("str.center", "{{ 'x'.center(2000000000) }}", r"center\(\) got the number 2000000000"),
    ("ljust", "{{ 'x'.ljust(2000000000) }}", r"ljust\(\) got the number 2000000000"),
    ("rjust", "{{ 'x'.rjust(2000000000) }}", r"rjust\(\) got the number 2000000000"),
    ("zfill", "{{ 'x'.zfill(2000000000) }}", r"zfill\(\) got the number 2000000000"),
    ("format-widths", "{{ ('%9999999s' * 1000) | format(*range(1000)) }}", "the format filter would hold 10000342416"),
    ("format-argument", "{{ ('%(a)s' * 1000) | format(a='x' * 10000000) }}", "the format filter would hold more"),
    ("percent-widths", "{{ ('%(a)9999999s' * 1000) % {'a': 1} }}", "a % format would hold 10000343011"),
    ("percent-argument", "{{ ('%(a)s' * 1000) % {'a': 'x' * 10000000} }}", "a % format would hold more than"),
    ("str.format", "{{ ('{0}' * 1000).format('x' * 10000000) }}", r"format\(\) would hold 20000337000"),
    ("str.format-width", "{{ ('{0:9999999}' * 1000).format(1) }}", r"format\(\) would hold 10000344000"),
    ("str.format-keyword", "{{ ('{a}' * 1000).format(a='x' * 10000000) }}", r"format\(\) would hold 20000337000"),
    ("format_map", "{{ ('{a}' * 1000).format_map({'a': 'x' * 10000000}) }}", r"format_map\(\) would hold"),
    ("string-times", "{{ 'x' * 2000000000 }}", r"a repetition \(\*\) would hold 2000000000"),
    ("list-times", "{{ ['x'] * 2000000000 }}", r"a repetition \(\*\) would hold 2000000000"),
    (
        "integer-times",
        "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "integers is too large a number",
    ),
    ("print", "{{ " + BIG + " }}", "a printed value would hold more than 10000000"),
    ("print-namespace", "{% set ns = namespace(a=" + BIG + ") %}{{ ns }}", "a printed value would hold more"),
    ("concat", "{{ (" + BIG + ") ~ '' }}", r"a concatenation \(~\) would hold more than"),
    ("string", "{{ (" + BIG + ") | string }}", "the string filter would hold more than"),
    ("upper", "{{ (" + BIG + ") | upper }}", "the upper filter would hold more than"),
    ("escape", "{{ ([('<' * 10000000)] * 100) | e }}", "the e filter would hold more than"),
    ("tojson", "{{ (" + BIG + ") | tojson }}", "the tojson filter would hold more than"),
    ("tojson-indent", "{{ [[[1] * 1000] * 1000] | tojson(indent=1000000) }}", "the tojson filter would hold 6006"),
    ("pprint", "{{ (" + BIG + ") | pprint }}", "the pprint filter would hold more than"),
    ("xmlattr", "{{ {'a': " + BIG + "} | xmlattr }}", "the xmlattr filter would hold more than"),
    ("urlencode", "{{ {'a': " + BIG + "} | urlencode }}", "the urlencode filter would hold more than"),
    ("wordwrap", "{{ ('x ' * 5000000) | wordwrap(1, wrapstring='y' * 1000) }}", "the wordwrap filter would hold"),
    ("urlize", "{{ ('a.co ' * 1000000) | urlize(target='t' * 10000) }}", "the urlize filter would hold 10150010100"),
    ("expandtabs", "{{ ('\\t' * 1000).expandtabs(tabsize=10000000) }}", r"expandtabs\(\) would hold 10000001000"),
    ("translate", "{{ ('x' * 100000).translate({120: 'y' * 100000}) }}", r"translate\(\) would hold 10000000000"),
    ("slice", "{{ messages | slice(10000000) | list | length }}", "the slice filter would hold 650000001"),
    ("batch", "{{ (messages[0].content * 5000000) | batch(1) | list | length }}", "the batch filter would hold 65"),
    ("lazy", "{{ ([[1] * 100000] * 1000000) | map('list') | list | length }}", "the map filter would hold more"),
    ("sum", "{{ ([['x'] * 10000] * 10000) | sum(start=[]) | length }}", "the sum filter would copy more than"),
    ("lipsum", "{{ lipsum(10000000) }}", r"lipsum\(\) would hold 14100000000"),
    ("strftime_now", "{{ strftime_now('%c' * 5000000) }}", r"strftime_now\(\) would hold 330000000"),
]

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from preprocess.chat import ChatFormatError, render_chat

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = 6 * 2**30 if hard == resource.RLIM_INFINITY else min(6 * 2**30, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))  # a bound that regresses fails the test, no more
    results = {}
    for name, template in json.load(sys.stdin):
        tracemalloc.start()
        try:
            render_chat([{"role": "user", "content": "hi"}], chat_template=template)
            error = None
        except Exception as exc:  # a regression's MemoryError, say: named, so that the test reports it
            error = str(exc) if isinstance(exc, ChatFormatError) else f"{type(exc).__name__}: {exc}"
        results[name] = {"error": error, "peak": tracemalloc.get_traced_memory()[1]}
        tracemalloc.stop()
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def refusals() -> dict:
    """name → {"error": the ChatFormatError's message or None, "peak": bytes}, from one capped child process."""
    cases = json.dumps([(name, template) for name, template, _ in HOSTILE])
    root = Path(__file__).resolve().parents[2]  # the child imports this checkout's preprocess
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], input=cases, capture_output=True, text=True, timeout=300, cwd=root
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(("name", "template", "message"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_result_too_large_is_refused_before_it_is_built(refusals, name, template, message):
    result = refusals[name]
    assert result["error"] is not None, f"{template} was rendered"
    assert result["error"].startswith("chat template: ")
    assert re.search(message, result["error"]), result["error"]
    assert result["peak"] < PEAK_LIMIT, f"{name}: {result['peak'] / 2**20:.0f} MiB"


# Ordinary uses of the same filters, methods and operators: rendered as Jinja renders them.
ORDINARY = [
    "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb\\n' | indent('> ', first=true, blank=true) }}",
    "{{ ['a', 'b', 1] | join(', ') }}|{{ messages | map(attribute='role') | join('/') }}|{{ '-'.join(['a', 'b']) }}",
    "{{ [{'n': 'p'}, {'n': 'q'}] | join(',', attribute='n') }}|{{ 'abc' | join('.') }}",
    "{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'bb', 2) }}|{{ 'aaa'.replace('a', 'bb', 2) }}",
    "{{ 'ab' | center(6) }}|{{ [1] | center(7) }}|{{ 'x'.center(5, '*') }}|{{ 'x'.ljust(3) }}|{{ '7'.zfill(3) }}",
    "{{ '%s=%05.1f' | format('x', 2.5) }}|{{ '%(a)s %(a)s' | format(a='y') }}|{{ '%d-%s' % (3, 'z') }}",
    "{{ '%*d' % (5, 1) }}|{{ '%(k)r' % {'k': 'v'} }}|{{ '%s' % [1, 2] }}|{{ '%a' % 'é' }}",
    "{{ '{0}{0}{b:>4}'.format('q', b=1) }}|{{ '{a}'.format_map({'a': 1}) }}|{{ '{:,}'.format(1234567) }}",
    "{{ 'ab' * 3 }}|{{ [1] * 3 }}|{{ 3 * 'c' }}|{{ 12345 * 6789 }}|{{ 2 ** 10 }}",
    "{{ 'one two three four' | wordwrap(8) }}|{{ 'one two three four' | wordwrap(8, wrapstring='<br>') }}",
    "{{ 'hello world' | truncate(8) }}|{{ 'see https://example.com now' | urlize(target='_blank') }}",
    "{{ '<a & b>' | e }}|{{ [1, '<'] | escape }}|{{ '\"q\"' | forceescape }}",
    "{{ {'k': [1, 'x'], 'n': none} | tojson }}|{{ {'k': [1, {'z': 'é\\n'}]} | tojson(indent=2) }}",
    "{{ {'b': 1, 'a': [1, 2], 'c': {'d': 'e' * 30, 'f': ['g' * 40] * 3}} | pprint }}",
    "{{ [1, 'a'] | string }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'ab cd' | title }}|{{ 'x' | capitalize }}",
    "{{ ' y ' | trim }}|{{ '<b>z</b>' | striptags }}|{{ 'a b' | wordcount }}|{{ 'x' | safe }}",
    "{{ 'a' ~ 1 ~ [2] ~ none ~ {'k': 'v'} }}|{% set s = 'p' %}{{ s ~ s }}",
    "{{ '\\tx'.expandtabs(4) }}|{{ 'abc'.translate({97: 'xy'}) }}",
    "{{ [1, 2, 3, 4, 5] | slice(2) | list }}|{{ [1, 2, 3] | batch(2, 0) | list }}",
    "{{ [[1], [2, 3]] | sum(start=[]) }}|{{ [{'v': [1]}, {'v': [2]}] | sum(attribute='v', start=[]) }}",
    "{{ [1, 2] | sum }}|{{ messages | slice(3) | list }}|{{ messages | batch(3, 0) | list }}",
    "{{ {'id': 'a<'} | xmlattr }}|{{ {'q': 'a b', 'r': 1} | urlencode }}|{{ 'a b&c' | urlencode }}",
    "{% set ns = namespace(a=1) %}{{ ns.a }}|{{ ns }}|{{ {'a': 1} }}|{{ [1, 'b', (2, 3)] }}",
    "{{ lipsum(2, false, 5, 9) }}|{{ lipsum(1) }}",
    "{% for pair in {'a': 1, 'b': 2} | items %}{{ pair[0] }}{{ pair[1] }}{% endfor %}|{{ messages | first }}",
]


def _jinja(template: str) -> str:
    """What plain Jinja renders (the same sandbox and whitespace settings, the chat templates' tojson)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return env.from_string(template).render(messages=HELLO)


@pytest.mark.parametrize("template", ORDINARY, ids=[t[3:30] for t in ORDINARY])
def test_ordinary_use_renders_as_jinja_does(template):
    random.seed(0)  # lipsum
    expected = _jinja(template)
    random.seed(0)
    assert render_chat(HELLO, chat_template=template).text == expected


def test_strftime_now_is_bounded_by_its_format():
    assert render_chat(HELLO, chat_template="{{ strftime_now('%Y') }}").text.isdigit()


def test_the_bounds_follow_the_size_limit():
    """The same template is refused under a small size limit and rendered without one."""
    template = "{{ ('x\\n' * 3) | indent(5000) }}{{ ('%5000s' * 3) % (1, 2, 3) }}{{ [['y' * 5000] * 3] | tojson }}"
    small = MediaLimits(max_template_chars=10_000)
    with pytest.raises(ChatFormatError, match=r"the indent filter would hold 25007, more than 10000"):
        render_chat(HELLO, chat_template=template, limits=small)
    unlimited = MediaLimits(max_template_seconds=None, max_template_chars=None)
    assert render_chat(HELLO, chat_template=template, limits=unlimited).text == _jinja(template)
