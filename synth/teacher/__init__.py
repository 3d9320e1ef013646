"""orchard.synth.teacher: the teacher LLM client that every synth method calls, in one sub-package.

Its rooms, each importing only those listed before it (no circles):

- ``errors``: TeacherError, the run-stop signals (InterruptRequested, TeacherInterrupted).
- ``config``: TeacherConfig (TeacherSettings + the endpoint), EndpointConfig, BudgetConfig (the recipe's ``teacher:`` block, the CLI's flags).
- ``chat``: ChatRequest and ChatResult, plain data, and ``as_request`` that checks one.
- ``calllog``: the SQLite call log that is also the cache, with its layout version and migrations.
- ``budget``: calls, tokens and cost for one output, earlier runs included.
- ``transports``: the HTTP paths (direct aiohttp, the openai SDK on aiohttp or httpx).
- ``pool``: CallPool, many calls in flight on one event loop, and a Ctrl-C that never pays twice.
- ``client``: Teacher, which puts them together (cache, dedup, budget, retries, endpoints).

A method needs only ``Teacher`` and ``ChatRequest``:

    teacher = Teacher(TeacherConfig(base_url="http://127.0.0.1:8000/v1", model="m"), work_dir / CALL_LOG_NAME)
    results = teacher.chat_many([ChatRequest(messages, seed=i, tag=row_id) for ...])  # input order
"""

from .calllog import CALL_LOG_NAME, SCHEMA_VERSION, CallLog, CallLogVersionError, find_call_log
from .chat import ChatRequest, ChatResult, as_request, parse_json_text
from .client import Teacher
from .config import BudgetConfig, EndpointConfig, TeacherConfig, TeacherSettings
from .errors import RUN_STOPS, InterruptRequested, TeacherError, TeacherInterrupted
from .pool import CallPool, progress_bar
from .transports import parse_retry_after

__all__ = [
    "CALL_LOG_NAME", "SCHEMA_VERSION", "CallLog", "CallLogVersionError", "find_call_log",
    "ChatRequest", "ChatResult", "as_request", "parse_json_text",
    "Teacher",
    "BudgetConfig", "EndpointConfig", "TeacherConfig", "TeacherSettings",
    "RUN_STOPS", "InterruptRequested", "TeacherError", "TeacherInterrupted",
    "CallPool", "progress_bar",
    "parse_retry_after",
]
