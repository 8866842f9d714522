"""runtime.request and runtime.scheduler without a model: fake runner outputs fed to ``update``, as vLLM's
``tests/v1/core/test_scheduler.py`` does. The property test simulates whole runs (arrivals, stops, aborts) and
checks each plan against an independent restatement of the policy."""

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import FinishReason, PrefillChunk, RequestState, RequestStatus, Scheduler, StepPlan, chunk_edges


def req(id, prompt=4, new=3, edges=None):
    return RequestState(id=id, prompt_tokens=prompt, max_new_tokens=new, edges=edges)


def spans(plan):
    """(id, slot, start, stop) of each prefill chunk."""
    return [(c.request.id, c.slot, c.start, c.stop) for c in plan.prefills]


def ids(requests):
    return [r.id for r in requests]


def step(scheduler, finished=()):
    plan = scheduler.schedule()
    return plan, scheduler.update(plan, finished)


def blocked(e, runs):
    """The reference rule: an edge at ``e`` splits a run."""
    return any(start < e < stop for start, stop in runs)


def expected_stop(r, runs, room, chunk, first):
    """Where ``r``'s next chunk should end with ``room`` budget left: the largest allowed edge within reach, else
    (the step's first chunk only) the first allowed edge beyond it, else None."""
    allowed = [e for e in range(r.num_computed_tokens + 1, r.prompt_tokens + 1) if not blocked(e, runs)]
    reach = min(r.prompt_tokens, r.num_computed_tokens + (room if chunk is None else min(room, chunk)))
    fits = [e for e in allowed if e <= reach]
    return fits[-1] if fits else (allowed[0] if first else None)


# --- the request record -------------------------------------------------------------------------------------


def test_chunk_edges_examples():
    assert chunk_edges(6) == (1, 2, 3, 4, 5, 6)
    assert chunk_edges(6, [(1, 4)]) == (1, 4, 5, 6)
    assert chunk_edges(4, [(0, 4)]) == (4,)
    assert chunk_edges(4, [(0, 2), (2, 4)]) == (2, 4)  # touching runs: the edge between them stays
    assert chunk_edges(5, [(2, 3)]) == (1, 2, 3, 4, 5)  # a one-token run blocks nothing


@st.composite
def any_runs(draw):
    """A length and spans (start, stop) within it, possibly overlapping."""
    length = draw(st.integers(1, 60))
    span = st.tuples(st.integers(0, length), st.integers(0, length)).filter(lambda r: r[0] < r[1])
    return length, draw(st.lists(span, max_size=6))


@given(any_runs())
def test_chunk_edges_matches_reference(case):
    length, runs = case
    edges = chunk_edges(length, runs)
    assert edges == tuple(e for e in range(1, length + 1) if not blocked(e, runs))
    assert edges[-1] == length
    req("r", prompt=length, edges=edges)  # always a valid RequestState.edges


@pytest.mark.parametrize(
    ("length", "runs", "name"),
    [(0, (), "length"), (2.0, (), "length"), (6, [(3, 2)], "runs"), (6, [(0, 7)], "runs"), (6, [(-1, 2)], "runs")],
)
def test_chunk_edges_errors(length, runs, name):
    with pytest.raises(ValueError, match=name):
        chunk_edges(length, runs)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 2.5}, "prompt_tokens"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"edges": (1, 2)}, "edges"),  # does not end with prompt_tokens
        ({"edges": [1, 4]}, "edges"),  # not a tuple
        ({"edges": (2, 1, 4)}, "edges"),
        ({"edges": (0, 4)}, "edges"),
        ({"edges": (4, 4)}, "edges"),
        ({"edges": ()}, "edges"),
        ({"num_computed_tokens": -1}, "num_computed_tokens"),
        ({"num_output_tokens": -1}, "num_output_tokens"),
        ({"status": "WAITING"}, "status"),
    ],
)
def test_request_validation(changes, name):
    with pytest.raises(ValueError, match=name):
        RequestState(**{"id": "r", "prompt_tokens": 4, "max_new_tokens": 3, **changes})


def test_request_record():
    r = req("r", prompt=5, edges=(2, 5))
    assert (r.status, r.slot, r.finish_reason, r.num_computed_tokens, r.num_output_tokens) == (
        RequestStatus.WAITING,
        -1,
        None,
        0,
        0,
    )
    assert r.is_waiting and not r.is_running and r.prefill_remaining == 5 and r.num_tokens == 5
    assert r.submitted is r.admitted is r.first_token is r.finished is None
    assert r != req("r", prompt=5, edges=(2, 5))  # records compare by identity
    assert FinishReason.STOP == "stop" and FinishReason.LENGTH == "length" and str(FinishReason.ABORT) == "abort"


# --- configuration and add ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 4), "slots"),
        ((1.5, 4), "slots"),
        ((2, 0), "token_budget"),
        ((3, 2), "token_budget"),  # fewer than slots
        ((2, 4, 0), "chunk"),
        ((2, 4, 2.0), "chunk"),
    ],
)
def test_scheduler_validation(args, name):
    with pytest.raises(ValueError, match=name):
        Scheduler(*args)


def test_add_refuses_known_ids_and_non_waiting():
    s = Scheduler(2, 8)
    s.add(req("a"))
    with pytest.raises(ValueError, match="'a'"):
        s.add(req("a"))
    done = req("b")
    done.status = RequestStatus.FINISHED
    with pytest.raises(ValueError, match="status"):
        s.add(done)
    assert ids(s.waiting) == ["a"] and s.waiting[0].submitted is not None


def test_empty_scheduler():
    s = Scheduler(2, 4)
    assert not s.has_work and s.free_slots == (0, 1) and s.running == () and s.waiting == ()
    plan = s.schedule()
    assert plan.empty and plan.num_tokens == 0 and plan == StepPlan()
    assert s.update(plan) == []
    assert s.schedule().empty  # an empty plan leaves nothing pending


# --- the policy ---------------------------------------------------------------------------------------------


def test_chunks_limited_by_chunk():
    s = Scheduler(1, 100, chunk=4)
    s.add(req("a", prompt=10, new=2))
    plans = [step(s)[0] for _ in range(3)]
    assert [spans(p) for p in plans] == [[("a", 0, 0, 4)], [("a", 0, 4, 8)], [("a", 0, 8, 10)]]
    assert [c.last for p in plans for c in p.prefills] == [False, False, True]
    assert [c.first for p in plans for c in p.prefills] == [True, False, False]
    assert ids(plans[0].admitted) == ["a"] and plans[1].admitted == plans[2].admitted == ()
    assert s.running[0].is_decoding and s.running[0].num_output_tokens == 1


def test_chunks_limited_by_budget():
    s = Scheduler(2, 6)
    a, b = req("a", prompt=5), req("b", prompt=5)
    s.add(a)
    s.add(b)
    plan, _ = step(s)
    assert spans(plan) == [("a", 0, 0, 5), ("b", 1, 0, 1)] and plan.num_tokens == 6 and not plan.over_budget
    plan, _ = step(s)
    assert plan.decodes == (a,) and spans(plan) == [("b", 1, 1, 5)] and plan.num_tokens == 5


def test_decodes_first_then_prefills_oldest_first():
    s = Scheduler(3, 6, chunk=3)
    a, b, c = req("a", prompt=2, new=5), req("b", prompt=9), req("c", prompt=9)
    for r in (a, b, c):
        s.add(r)
    plan, _ = step(s)
    assert spans(plan) == [("a", 0, 0, 2), ("b", 1, 0, 3), ("c", 2, 0, 1)]
    plan, _ = step(s)  # a decodes before anything else; b (older) before c
    assert plan.decodes == (a,) and spans(plan) == [("b", 1, 3, 6), ("c", 2, 1, 3)] and plan.num_tokens == 6
    plan, _ = step(s)
    assert plan.decodes == (a,) and spans(plan) == [("b", 1, 6, 9), ("c", 2, 3, 5)]
    plan, _ = step(s)
    assert plan.decodes == (a, b) and spans(plan) == [("c", 2, 5, 8)]


def test_fcfs_admission_into_lowest_free_slot():
    s = Scheduler(3, 30)
    a, b, c = req("a", prompt=2, new=5), req("b", prompt=2, new=1), req("c", prompt=2, new=5)
    for r in (a, b, c):
        s.add(r)
    plan, done = step(s)
    assert ids(plan.admitted) == ["a", "b", "c"] and [r.slot for r in (a, b, c)] == [0, 1, 2]
    assert done == [b] and b.finish_reason is FinishReason.LENGTH and s.free_slots == (1,)
    d, e = req("d"), req("e")
    s.add(d)
    s.add(e)
    plan, _ = step(s)
    assert plan.decodes == (a, c) and plan.admitted == (d,) and d.slot == 1 and spans(plan) == [("d", 1, 0, 4)]
    assert s.waiting == (e,) and s.running == (a, d, c) and b.slot == 1  # the finished record keeps its slot


def test_slot_reuse_after_finish():
    s = Scheduler(1, 4)
    a, b = req("a", prompt=3, new=2), req("b", prompt=2, new=1)
    s.add(a)
    s.add(b)
    plan, _ = step(s)
    assert spans(plan) == [("a", 0, 0, 3)] and s.waiting == (b,)  # no free slot for b
    plan, done = step(s)
    assert plan.decodes == (a,) and plan.prefills == () and done == [a]
    plan, done = step(s)
    assert spans(plan) == [("b", 0, 0, 2)] and plan.prefills[0].first and done == [b] and not s.has_work


def test_vision_block_waits_unless_first_chunk():
    """The head of the queue cannot end a chunk inside its image: it waits, and nobody behind it is admitted;
    next step it is the first chunk and takes the whole block, over the budget."""
    s = Scheduler(2, 4)
    x = req("x", prompt=3, new=4)
    v = req("v", prompt=10, edges=chunk_edges(10, [(0, 9)]))  # (9, 10)
    y = req("y", prompt=1)
    for r in (x, v, y):
        s.add(r)
    plan, _ = step(s)
    assert spans(plan) == [("x", 0, 0, 3)] and plan.admitted == (x,) and s.waiting == (v, y)
    plan, _ = step(s)
    assert plan.decodes == (x,) and spans(plan) == [("v", 1, 0, 9)]
    assert plan.over_budget and plan.num_tokens == 10
    plan, _ = step(s)
    assert spans(plan) == [("v", 1, 9, 10)] and not plan.over_budget and s.waiting == (y,)


def test_vision_block_longer_than_chunk_is_taken_whole():
    s = Scheduler(1, 8, chunk=2)
    s.add(req("v", prompt=6, edges=chunk_edges(6, [(1, 5)])))  # (1, 5, 6)
    plans = [step(s)[0] for _ in range(3)]
    assert [spans(p) for p in plans] == [[("v", 0, 0, 1)], [("v", 0, 1, 5)], [("v", 0, 5, 6)]]
    assert not any(p.over_budget for p in plans)  # over the chunk, within the budget


def test_prefilling_request_that_cannot_fit_is_skipped():
    s = Scheduler(3, 6, chunk=2)
    p, v, c = req("p", prompt=6), req("v", prompt=6, edges=chunk_edges(6, [(1, 5)])), req("c", prompt=9)
    for r in (p, v, c):
        s.add(r)
    plan, _ = step(s)
    assert spans(plan) == [("p", 0, 0, 2), ("v", 1, 0, 1), ("c", 2, 0, 2)]
    plan, _ = step(s)  # v's next edge (5) is beyond its chunk and it is not first: c goes on
    assert spans(plan) == [("p", 0, 2, 4), ("c", 2, 2, 4)]
    plan, _ = step(s)
    assert spans(plan) == [("p", 0, 4, 6), ("c", 2, 4, 6)]
    plan, _ = step(s)  # p decodes; v is now the first chunk and takes its block; c gets what is left
    assert plan.decodes == (p,) and spans(plan) == [("v", 1, 1, 5), ("c", 2, 6, 7)] and plan.num_tokens == 6


# --- update: finishing --------------------------------------------------------------------------------------


def test_length_finish():
    s = Scheduler(1, 8)
    a = req("a", prompt=3, new=3)
    s.add(a)
    outputs = []
    for _ in range(3):
        plan, done = step(s)
        outputs.append((a.num_computed_tokens, a.num_output_tokens, ids(done)))
    assert outputs == [(3, 1, []), (4, 2, []), (5, 3, ["a"])]
    assert a.status is RequestStatus.FINISHED and a.finish_reason is FinishReason.LENGTH
    assert a.slot == 0 and s.free_slots == (0,) and not s.has_work and s.schedule().empty
    assert a.submitted <= a.admitted <= a.first_token <= a.finished


def test_max_new_tokens_one():
    s = Scheduler(1, 4, chunk=2)
    a = req("a", prompt=3, new=1)
    s.add(a)
    plan, done = step(s)
    assert spans(plan) == [("a", 0, 0, 2)] and done == [] and a.is_prefilling and a.num_output_tokens == 0
    plan, done = step(s)
    assert spans(plan) == [("a", 0, 2, 3)] and done == [a]
    assert a.finish_reason is FinishReason.LENGTH and a.num_output_tokens == 1 and a.num_computed_tokens == 3
    assert a.first_token is not None and s.free_slots == (0,)


def test_stop_finish():
    s = Scheduler(3, 12)
    a, b, c = req("a", new=5), req("b", new=5), req("c", new=2)
    for r in (a, b, c):
        s.add(r)
    plan, done = step(s, ["b"])  # a stop id as the first token
    assert done == [b] and b.finish_reason == "stop" and b.num_output_tokens == 1
    plan, done = step(s, {"c": FinishReason.STOP, "a": "stop"})  # c stops on its last allowed token: STOP wins
    assert done == [a, c] and a.finish_reason is c.finish_reason is FinishReason.STOP
    assert (a.num_output_tokens, c.num_output_tokens) == (2, 2) and not s.has_work


def test_update_refuses_bad_calls():
    s = Scheduler(2, 4, chunk=2)
    a, b = req("a", prompt=2), req("b", prompt=4)
    s.add(a)
    s.add(b)
    plan = s.schedule()
    with pytest.raises(RuntimeError, match="update"):
        s.schedule()
    with pytest.raises(ValueError, match="plan"):
        s.update(StepPlan(decodes=(a,)))
    with pytest.raises(ValueError, match="'b'"):  # b is mid-prefill: it sampled nothing
        s.update(plan, ["b"])
    with pytest.raises(ValueError, match="'z'"):
        s.update(plan, {"z": FinishReason.STOP})
    with pytest.raises(ValueError, match="'later'"):
        s.update(plan, {"a": "later"})
    assert a.num_computed_tokens == b.num_computed_tokens == 0  # nothing applied
    s.update(plan)
    assert (a.num_computed_tokens, b.num_computed_tokens) == (2, 2)
    with pytest.raises(ValueError, match="plan"):
        s.update(plan)  # applied already


# --- abort --------------------------------------------------------------------------------------------------


def test_abort_waiting_and_running():
    s = Scheduler(1, 8)
    a, b, c = req("a"), req("b"), req("c")
    for r in (a, b, c):
        s.add(r)
    step(s)
    assert s.abort("b") is b and b.finish_reason is FinishReason.ABORT and b.slot == -1
    assert s.waiting == (c,)
    assert s.abort("a") is a and a.is_finished and a.slot == 0 and s.free_slots == (0,)
    with pytest.raises(KeyError, match="'a'"):
        s.abort("a")
    plan, _ = step(s)
    assert plan.admitted == (c,) and c.slot == 0
    s.add(req("a"))  # a finished id may come again


def test_abort_between_schedule_and_update():
    s = Scheduler(2, 8)
    a, b = req("a", new=1), req("b", new=1)
    s.add(a)
    s.add(b)
    plan = s.schedule()
    s.abort("a")
    assert s.update(plan, ["a"]) == [b]  # a is skipped, even when the runner reports its stop
    assert a.finish_reason is FinishReason.ABORT and a.num_computed_tokens == 0 and a.num_output_tokens == 0
    assert not s.has_work and s.free_slots == (0, 1)


def test_abort_with_a_reason():
    s = Scheduler(1, 8)
    a, b = req("a"), req("b")
    s.add(a)
    s.add(b)
    plan = s.schedule()
    assert s.abort("a", FinishReason.ERROR) is a and a.finish_reason is FinishReason.ERROR  # failed at admission
    assert s.abort("b", "error").finish_reason == "error" and s.update(plan) == [] and not s.has_work
    assert FinishReason.ERROR == "error"


# --- whole runs ---------------------------------------------------------------------------------------------


def simulate(slots, budget, chunk, specs, rnd, p_stop=0.15, p_abort=0.03):
    """Run ``specs`` — (arrival step, prompt tokens, vision runs, max_new_tokens) — to completion with random stops
    and aborts, checking every plan and update; returns a trace of the plans."""
    s = Scheduler(slots, budget, chunk)
    requests = [
        RequestState(id=i, prompt_tokens=p, max_new_tokens=n, edges=chunk_edges(p, runs) if runs else None)
        for i, (_, p, runs, n) in enumerate(specs)
    ]
    runs_of = {i: spec[2] for i, spec in enumerate(specs)}
    arrivals = sorted(range(len(specs)), key=lambda i: specs[i][0])
    last_arrival = max(spec[0] for spec in specs)
    queue = deque()  # the model's FCFS queue
    owner = [None] * slots  # the model's slot table
    admission = []  # the model's prefilling requests, oldest admission first
    tiles = {i: [] for i in range(len(specs))}
    reason = {}
    trace = []
    bound = sum(p + n for _, p, _, n in specs) + last_arrival + 1  # every step with work moves ≥ 1 token
    for t in range(bound + 1):
        while arrivals and specs[arrivals[0]][0] == t:
            r = requests[arrivals.pop(0)]
            s.add(r)
            queue.append(r)
        if not arrivals and not s.has_work:
            break
        assert t < bound, "no progress"
        if s.has_work and rnd.random() < p_abort:
            victim = rnd.choice(list(queue) + [r for r in owner if r is not None])
            assert s.abort(victim.id) is victim
            reason[victim.id] = FinishReason.ABORT
            if victim in queue:
                queue.remove(victim)
            else:
                owner[victim.slot] = None
                if victim in admission:
                    admission.remove(victim)

        has_work = s.has_work
        decoding = tuple(r for r in owner if r is not None and r.is_decoding)
        free = [i for i, r in enumerate(owner) if r is None]
        plan = s.schedule()
        assert plan.empty == (not has_work)
        assert plan.decodes == decoding
        assert plan.admitted == tuple(list(queue)[: len(plan.admitted)])  # FCFS
        for r in plan.admitted:
            assert r.slot == free.pop(0) and r.is_prefilling  # lowest free slot
            owner[r.slot] = queue.popleft()
            admission.append(r)
        # The policy restated: prefilling requests by admission (the newly admitted last), each given the chunk
        # expected_stop says with the room left; then the head of the queue, if a slot is free, must not fit.
        room, planned = budget - len(decoding), 0
        chunks = {c.request.id: c for c in plan.prefills}
        assert [c.request for c in plan.prefills] == [r for r in admission if r.id in chunks]
        for r in admission:
            want = expected_stop(r, runs_of[r.id], room, chunk, first=planned == 0) if room > 0 else None
            c = chunks.get(r.id)
            assert (None if c is None else c.stop) == want
            if c is not None:
                assert owner[c.slot] is r and c.slot == r.slot and c.start == r.num_computed_tokens
                assert not blocked(c.stop, runs_of[r.id])
                room -= c.num_tokens
                planned += 1
        if queue and free and room > 0:  # strict FCFS: the head could not be admitted
            assert expected_stop(queue[0], runs_of[queue[0].id], room, chunk, first=planned == 0) is None
        assert plan.over_budget == (plan.num_tokens > budget)
        if plan.over_budget:
            assert len(plan.prefills) == 1
        sampling = [c.request for c in plan.prefills if c.last] + list(plan.decodes)
        finished = {r.id: FinishReason.STOP for r in sampling if rnd.random() < p_stop}
        for c in plan.prefills:
            tiles[c.request.id].append((c.start, c.stop))
        done = s.update(plan, finished)

        for r in sampling:
            assert r.num_output_tokens >= 1
            assert r.num_computed_tokens == r.prompt_tokens + r.num_output_tokens - 1
            if r.id in finished:
                reason[r.id] = FinishReason.STOP
            elif r.num_output_tokens == r.max_new_tokens:
                reason[r.id] = FinishReason.LENGTH
            else:
                assert r.num_output_tokens < r.max_new_tokens and r.is_decoding
        assert [r.slot for r in done] == sorted(r.slot for r in done)
        assert {r.id for r in done} == {r.id for r in sampling if r.id in reason}
        for r in done:
            assert r.is_finished and r.finish_reason is reason[r.id] and owner[r.slot] is r
            owner[r.slot] = None
        admission = [r for r in admission if r.is_prefilling]
        assert s.running == tuple(r for r in owner if r is not None) and s.waiting == tuple(queue)
        trace.append((ids(plan.decodes), spans(plan), ids(plan.admitted), plan.over_budget, ids(done)))

    for r in requests:
        assert r.is_finished and r.finish_reason is reason[r.id]
        edges = [e for _, e in tiles[r.id]]
        assert [a for a, _ in tiles[r.id]] == [0, *edges][: len(edges)]  # contiguous from 0
        assert r.num_computed_tokens == (edges[-1] if edges else 0) + max(r.num_output_tokens - 1, 0)
        if r.finish_reason is not FinishReason.ABORT:
            assert edges[-1] == r.prompt_tokens and r.num_output_tokens >= 1
            assert (r.num_output_tokens == r.max_new_tokens) or r.finish_reason is FinishReason.STOP
    return trace


@st.composite
def vision_runs(draw, length):
    """Disjoint half-open spans (start, stop) of at least 2 tokens within [0, length); they may touch."""
    runs, pos = [], 0
    while draw(st.booleans()):
        start = pos + draw(st.integers(0, 6))
        stop = start + draw(st.integers(2, 16))
        if stop > length:
            break
        runs.append((start, stop))
        pos = stop
    return runs


@st.composite
def workloads(draw):
    slots = draw(st.integers(1, 4))
    budget = draw(st.integers(slots, slots + 16))
    chunk = draw(st.none() | st.integers(1, 12))
    specs = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.integers(1, 40))
        specs.append((draw(st.integers(0, 12)), length, draw(vision_runs(length)), draw(st.integers(1, 6))))
    return slots, budget, chunk, specs


@settings(max_examples=300)
@given(workloads(), st.randoms(use_true_random=False))
def test_whole_runs(workload, rnd):
    simulate(*workload, rnd)


def test_plans_are_deterministic():
    specs = [(0, 17, [(2, 12)], 3), (0, 5, [], 4), (1, 30, [(0, 8), (8, 20)], 2), (3, 9, [], 5), (3, 1, [], 1)]
    traces = [simulate(2, 6, 4, specs, random.Random(7)) for _ in range(2)]
    assert traces[0] == traces[1] and any(over for _, _, _, over, _ in traces[0])


def test_plan_records():
    a = req("a", prompt=5)
    chunk = PrefillChunk(slot=0, request=a, start=2, stop=5)
    assert (chunk.num_tokens, chunk.first, chunk.last) == (3, False, True)
    plan = StepPlan(decodes=(req("b"),), prefills=(chunk,))
    assert plan.num_tokens == 4 and not plan.empty
