"""service.errors: pydantic locations and messages turned into one readable line."""

from service.batching import ClientGone, DeadlineExceeded
from service.errors import REFUSED, RetryLater, describe_location, readable_error, refusal, retry_fields


def test_locations_read_like_python():
    assert describe_location(["instances", 2, "sequence", 0, 1]) == "instances[2].sequence[0][1]"
    assert describe_location(["instances", 0, "model"]) == "instances[0].model"
    assert describe_location([]) == "body"


def test_headline_lists_the_first_problems_and_keeps_the_detail():
    detail = [{"loc": ["instances", i, "sequence"], "msg": "Field required"} for i in range(5)]
    body = readable_error({"error": "5 validation errors for Input", "detail": detail})
    assert body["error"] == (
        "instances[0].sequence: Field required; instances[1].sequence: Field required; "
        "instances[2].sequence: Field required; and 2 more"
    )
    assert body["detail"] == detail[:3]  # capped: a body with a million bad values gets a small answer


def test_union_branches_are_reported_once_at_the_step():
    detail = [
        {"loc": ["instances", 0, "history", 3, "float"], "msg": "Input should be a finite number"},
        {"loc": ["instances", 0, "history", 3, "list[float]"], "msg": "Input should be a valid array"},
    ]
    body = readable_error({"error": "2 validation errors for Input", "detail": detail})
    assert body["error"] == "instances[0].history[3]: Input should be a finite number"


def test_a_step_that_fails_inside_the_list_branch_is_reported_once_where_it_fails():
    detail = [
        {"loc": ["steps", 1, "float"], "msg": "Input should be a valid number"},
        {"loc": ["steps", 1, "list[float]", 0], "msg": "Input should be a finite number"},
        {"loc": ["every_step"], "msg": "Input should be a valid boolean"},
    ]
    body = readable_error({"error": "3 validation errors for StreamMessage", "detail": detail})
    assert body["error"] == "steps[1][0]: Input should be a finite number; every_step: Input should be a valid boolean"
    assert body["detail"] == detail[1:]


def test_our_own_errors_pass_through_unchanged():
    body = {"error": "instances[0].model: unknown model 'x'"}
    assert readable_error(body) == body


def test_a_retry_hint_is_whole_seconds_of_at_least_one_as_retry_after_and_milliseconds():
    hints = {ms: retry_fields(ms) for ms in (0, 3, 999, 1000, 1001, 2500)}
    assert hints == {
        0: {"retry_after_s": 1, "retry_after_ms": 1},
        3: {"retry_after_s": 1, "retry_after_ms": 3},
        999: {"retry_after_s": 1, "retry_after_ms": 999},
        1000: {"retry_after_s": 1, "retry_after_ms": 1000},
        1001: {"retry_after_s": 2, "retry_after_ms": 1001},
        2500: {"retry_after_s": 3, "retry_after_ms": 2500},
    }


def test_every_overload_is_answered_by_one_refusal_that_also_marks_the_connection():
    scope = {}
    assert refusal(RetryLater("the model is busy", 2500), scope) == (
        503, {"retry-after": "3"}, {"error": "the model is busy", "retry_after_s": 3, "retry_after_ms": 2500},
    )
    assert scope == {REFUSED: 3}  # service.framework leaves the connection unread until then


def test_a_missed_deadline_and_a_gone_client_are_overload_with_an_unknown_wait():
    for err in (DeadlineExceeded("not answered within the deadline"), ClientGone("the client hung up")):
        assert isinstance(err, RetryLater)
        assert err.body() == {"error": str(err), "retry_after_s": 1, "retry_after_ms": 1000}
